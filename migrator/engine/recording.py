"""Records how steps ended, and their tenants' new states: the one writer of a step's result.

Modelled on Django's ``MigrationRecorder``, with one invariant: **a step is recorded COMPLETED only
after its work succeeded and its kind's ``verify`` found nothing, and a tenant's new state is written
by the same statement as its last step's record** (so the two commit together, or neither does).

Whichever way the runner ran a step (a phase-wide step, a tenant's steps one by one, a batch of
tenants in one transaction, a range of a large table), its end goes through :func:`record`. What the
runner decides is only *when*: a step that wrote a RUNNING row is recorded as soon as it ends while
its tenant goes on; a tenant's last step to run (and every step that can simply run again, which
writes no RUNNING row) is recorded with the tenant's state at the end of the tenant (or of the batch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.utils import timezone
from psycopg import sql

from migrator.core.steps import StepResult
from migrator.db import render as db_render
from migrator.engine.tracking import HOST, RESULT_COLUMNS, StepRow, result_details
from migrator.models import MigrationRecord, Status


@dataclass(frozen=True)
class StepEnd:
    """How one step (or range) ended: its tracking row, status, result, error and times."""

    record_id: int
    status: Status
    result: StepResult | None
    error: str | None
    started_at: datetime
    completed_at: datetime

    @property
    def completed(self) -> bool:
        return self.status == Status.COMPLETED


def start(record: StepRow) -> StepRow:
    """RUNNING, committed without waiting for the WAL flush: a server crash may lose it, which leaves
    the row PENDING (the step reruns, as it would after being RUNNING: ``close_interrupted``); the
    write of the step's end after its work is synchronous and flushes this one with it."""
    from django_tenants.utils import get_public_schema_name

    record.status = Status.RUNNING
    record.started_at = timezone.now()
    # One statement, its own transaction: the setting, local to it, holds for its commit.
    query = sql.SQL(
        "UPDATE {table} SET status = %s, started_at = %s, host = %s, pid = %s "
        "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit WHERE id = %s"
    ).format(table=sql.Identifier(get_public_schema_name(), MigrationRecord._meta.db_table))
    with connection.cursor() as cursor:
        cursor.execute(db_render(query), [str(record.status), record.started_at, HOST, os.getpid(), record.pk])
    return record


def start_many(records: list[StepRow]) -> datetime:
    """``start`` for a batch of steps, in one statement; returns the time they started."""
    now = timezone.now()
    MigrationRecord.objects.filter(pk__in=[r.pk for r in records]).update(
        status=Status.RUNNING, started_at=now, host=HOST, pid=os.getpid()
    )
    for record in records:
        record.status, record.started_at = Status.RUNNING, now
    return now


def record(ends: list[StepEnd], tenant_states: Mapping[str, str] | None = None) -> None:
    """Write ``ends`` and the tenants' new states (tenant id -> state) in one statement.

    One UPDATE of the fields a step's end sets: checkpoints the step wrote to its row meanwhile stay,
    its details are merged into what the row holds, and a result field the step did not fill keeps
    the row's value. The statement needs no transaction of its own to be all or nothing. Values are
    literals: it runs without parameters, so no '%' in a step's details can be taken for a
    placeholder. Tables are named with their schema: the caller may be in a tenant's schema context.
    """
    query = _ends_query(ends) if ends else None
    if tenant_states:
        states = _states_query(tenant_states)
        query = states if query is None else sql.SQL("WITH finished AS ({}) ").format(query) + states
    if query is None:
        return
    with connection.cursor() as cursor:
        cursor.execute(db_render(query))


def _states_query(tenant_states: Mapping[str, str]) -> sql.Composed:
    from django_tenants.utils import get_public_schema_name

    from tenants.models import Tenant

    values = sql.SQL(", ").join(
        sql.SQL("({}, {})").format(sql.Literal(tenant_id), sql.Literal(str(state)))
        for tenant_id, state in tenant_states.items()
    )
    return sql.SQL(
        "UPDATE {tenants} t SET migration_state = v.state FROM (VALUES {values}) v(tenant_id, state) "
        "WHERE t.tenant_id = v.tenant_id"
    ).format(tenants=sql.Identifier(get_public_schema_name(), Tenant._meta.db_table), values=values)


def _ends_query(ends: list[StepEnd]) -> sql.Composed:
    from django_tenants.utils import get_public_schema_name

    values = sql.SQL(", ").join(
        sql.SQL("({})").format(
            sql.SQL(", ").join(
                [
                    sql.Literal(end.record_id),
                    sql.Literal(str(end.status)),
                    sql.Literal(end.started_at),
                    sql.Literal(end.completed_at),
                    sql.Literal(end.error),
                    *(sql.Literal(end.result.columns()[name] if end.result else None) for name in RESULT_COLUMNS),
                    sql.Literal(json.dumps(result_details(end.result))),
                ]
            )
        )
        for end in ends
    )
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in RESULT_COLUMNS)
    assignments = sql.SQL(", ").join(
        sql.SQL("{c} = coalesce(v.{c}::{t}, m.{c})").format(c=sql.Identifier(name), t=sql.SQL(type_name))
        for name, type_name in RESULT_COLUMNS.items()
    )
    return sql.SQL(
        "UPDATE {table} m SET status = v.status, started_at = v.started_at::timestamptz, "
        "completed_at = v.completed_at::timestamptz, "
        "duration = v.completed_at::timestamptz - v.started_at::timestamptz, error_message = v.error::text, "
        "host = {host}, pid = {pid}, details = m.details || v.details::jsonb, {assignments} "
        "FROM (VALUES {values}) v(id, status, started_at, completed_at, error, {columns}, details) WHERE m.id = v.id"
    ).format(
        table=sql.Identifier(get_public_schema_name(), MigrationRecord._meta.db_table),
        host=sql.Literal(HOST),
        pid=sql.Literal(os.getpid()),
        assignments=assignments,
        values=values,
        columns=columns,
    )
