"""Reads and writes the tracking rows of ``public.schema_migrations`` for the engine; how a step
started and ended is written by ``engine/recording.py``.

Every write here commits at once (autocommit), so the table always shows what is happening,
even while a step's own transaction is open on another connection.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Max
from django.utils import timezone
from psycopg import sql

from migrator.core.details import DeployDetails, RangeBounds, RowDetails, read_details
from migrator.core.steps import EXCLUDE, RANGE_KINDS, KeyRange, Step, StepResult
from migrator.db import fetchall as db_fetchall
from migrator.db import render as db_render
from migrator.models import DEPLOY, DEPLOY_KEY, MigrationRecord, Status, of_steps
from migrator.step_ref import StepRef

HOST = socket.gethostname()


def latest_records(phase: str, keys: Iterable[str] | None = None) -> dict[str, MigrationRecord]:
    """The newest attempt of every step of ``phase`` (one query)."""
    rows = MigrationRecord.objects.filter(phase=phase)
    if keys is not None:
        rows = rows.filter(migration_id__in=list(keys))
    return {row.migration_id: row for row in rows.latest_attempts()}


@dataclass(frozen=True)
class StepState:
    """Where a step stands: its newest attempt's number and status (and tenant)."""

    tenant_id: str | None
    attempt: int
    status: str


def latest_states(phase: str, keys: Iterable[str] | None = None) -> dict[str, StepState]:
    """:func:`latest_records` reduced to what planning needs: ten thousand tenants have tens of
    thousands of steps, and a model instance each would be most of the process's memory."""
    rows = MigrationRecord.objects.filter(phase=phase)
    if keys is not None:
        rows = rows.filter(migration_id__in=list(keys))
    return {
        key: StepState(tenant_id, attempt, status)
        for key, tenant_id, attempt, status in rows.latest_attempts()
        .values_list("migration_id", "tenant_id", "attempt", "status")
        .iterator(chunk_size=5000)
    }


# Kinds of steps a run of their phase plans only under some options (see latest_statuses), and the key
# ranges of a large table, which its next copy after a rollback plans again (fewer of them, maybe).
PLANNED_BY_OPTION: tuple[str, ...] = ("start_two_way_sync", EXCLUDE, "service_role", *RANGE_KINDS)


def latest_statuses(phases: list[str]) -> dict[tuple[str, str | None], set[str]]:
    """(phase, tenant or None for phase-wide) -> the statuses of the latest attempts of its steps, aggregated
    by the server: one row per phase and tenant instead of a record per step (130,000 records at 10,000
    tenants took seconds to build). The newest attempts are an anti-join on the (migration_id, attempt
    DESC) index, as ``MigrationRecordQuerySet.latest_attempts``.

    Without the rolled-back steps a later run of their phase left out. A rollback marks every step of the
    phases it undoes ROLLED_BACK; a later run makes new attempts of the steps it plans, but a step only
    some options plan (:data:`PLANNED_BY_OPTION`: an online run's sync, an exclusion by ``--skip-schema``,
    a role of another prefix) would stay ROLLED_BACK for good after a run without them and keep the phase
    unfinished; so would the key ranges of an earlier plan of a large table beyond the new plan's last.
    Such a step is superseded once a step of its phase and tenant (or phase-wide) that is not
    rolled back was recorded after it (a higher id). Every other kind of step is planned by every run of
    its phase that covers its tenant: rolled back, it is work still to do. Attempt numbers never come
    from here.
    """
    table = sql.Identifier(MigrationRecord._meta.db_table)
    latest = sql.SQL(
        "SELECT id, phase, tenant_id, step, status FROM {table} r WHERE phase = ANY(%s) AND NOT EXISTS "
        "(SELECT FROM {table} n WHERE n.migration_id = r.migration_id AND n.attempt > r.attempt)"
    ).format(table=table)
    rows = db_fetchall(
        sql.SQL(
            # hashed in two steps: an array_agg(DISTINCT) over every row would sort them all; a superseded
            # step (a candidate) counts only if it is newer than the newest step kept
            "SELECT phase, tenant_id, coalesce(array_agg(status) FILTER (WHERE NOT candidate), '{{}}'), "
            " coalesce(max(newest) FILTER (WHERE candidate) > coalesce(max(newest) FILTER (WHERE status <> %s), 0),"
            " false) FROM (SELECT phase, tenant_id, status, candidate, max(id) AS newest FROM"
            " (SELECT *, status = %s AND step = ANY(%s) AS candidate FROM ({latest}) latest) current"
            " GROUP BY phase, tenant_id, status, candidate) grouped GROUP BY phase, tenant_id"
        ).format(latest=latest),
        [Status.ROLLED_BACK, Status.ROLLED_BACK, list(PLANNED_BY_OPTION), phases],
    )
    return {
        (phase, tenant_id): set(found) | ({Status.ROLLED_BACK.value} if rolled_back_left else set())
        for phase, tenant_id, found, rolled_back_left in rows
    }


def close_interrupted(phase: str | None = None) -> int:
    """RUNNING rows (of ``phase``, or of every phase) belong to a run that died: the caller holds the
    lock, so no live process can own them. Close them as FAILED."""
    rows = MigrationRecord.objects.filter(status=Status.RUNNING)
    if phase is not None:
        rows = rows.filter(phase=phase)
    return rows.update(
        status=Status.FAILED,
        completed_at=timezone.now(),
        error_message="interrupted: the process running this step ended before it finished; rerun the phase to resume",
    )


@dataclass(slots=True)
class StepRow:
    """What the runner reads and writes of a step's tracking row during the run; the rest (details,
    description, ...) is written by UPDATEs and never read back. Not a model instance: at ten thousand
    tenants the runner holds tens of thousands of these, and a model instance each costs several times
    the memory."""

    pk: int
    migration_id: str
    attempt: int
    status: str
    started_at: datetime | None
    tenant_id: str | None


# The columns a StepRow is read from, in its fields' order (its ``pk`` is the ``id`` column).
RUNNER_FIELDS = tuple("id" if f.name == "pk" else f.name for f in fields(StepRow))
PENDING_ROWS_PER_INSERT = 1000


def _pending_attempt(
    step: Step, *, kind: str, migration_id: str, description: str, attempt: int, **columns: Any
) -> MigrationRecord:
    """A new PENDING attempt of ``step``, or of one of its ranges (``kind`` then the range's), by this process."""
    return MigrationRecord(
        migration_id=migration_id,
        description=description,
        status=Status.PENDING,
        phase=step.phase,
        phase_number=step.phase_number,
        tenant_id=step.tenant_id,
        step=kind,
        target=str(step.target),
        attempt=attempt,
        host=HOST,
        pid=os.getpid(),
        **columns,
    )


def ensure_pending(steps: list[Step], latest: dict[str, StepState]) -> dict[str, StepRow]:
    """Give every step a PENDING row to start from: reuse a PENDING latest attempt, else add attempt + 1.

    Returns the rows' :class:`StepRow`, inserted and loaded a thousand at a time."""
    if not steps:
        return {}
    new_rows: list[MigrationRecord] = []
    for step in steps:
        previous = latest.get(step.key)
        if previous is not None and previous.status == Status.PENDING:
            continue
        attempt = (previous.attempt + 1) if previous else 1
        new_rows.append(
            _pending_attempt(step, kind=step.kind, migration_id=step.key, description=step.description, attempt=attempt)
        )
        if len(new_rows) == PENDING_ROWS_PER_INSERT:
            MigrationRecord.objects.bulk_create(new_rows)
            new_rows = []
    MigrationRecord.objects.bulk_create(new_rows)
    rows = MigrationRecord.objects.filter(phase=steps[0].phase, migration_id__in=[s.key for s in steps])
    return {
        values[1]: StepRow(*values)
        for values in rows.latest_attempts().values_list(*RUNNER_FIELDS).iterator(chunk_size=5000)
    }


# The result's columns of a tracking row, and their types.
RESULT_COLUMNS = {
    "rows_expected": "bigint",
    "rows_copied": "bigint",
    "source_fingerprint": "text",
    "target_fingerprint": "text",
}


def result_details(result: StepResult | None) -> dict[str, Any]:
    if result is None:
        return {}
    if not result.message:
        return dict(result.details)
    return {**result.details, **RowDetails(message=result.message)}


def save_checkpoint(record_id: int, checkpoint: int | None, rows_copied: int) -> None:
    """Called inside a batch's transaction, so the checkpoint commits with the batch."""
    MigrationRecord.objects.filter(pk=record_id).update(checkpoint=checkpoint, rows_copied=rows_copied)


def save_expected(record_id: int, rows_expected: int) -> None:
    """The source row count, as soon as a copy has counted it: a running step then shows copied / expected."""
    MigrationRecord.objects.filter(pk=record_id).update(rows_expected=rows_expected)


def mark_rolled_back(phases: Iterable[str], tenant_ids: list[str] | None = None, kept: Iterable[StepRef] = ()) -> int:
    """Attempts whose effects a rollback undid become ROLLED_BACK, so the next run does those steps again.

    Failed and pending attempts are marked too (their partial work is gone as well; the error text
    stays). The ``kept`` steps (the backup's) stay COMPLETED: the dump still holds the data as it was before.
    """
    rows = MigrationRecord.objects.filter(
        phase__in=list(phases), status__in=[Status.COMPLETED, Status.FAILED, Status.PENDING]
    ).exclude(of_steps(*kept))
    if tenant_ids is not None:
        rows = rows.filter(tenant_id__in=tenant_ids)
    return rows.update(status=Status.ROLLED_BACK)


def analyze() -> None:
    """Fresh planner statistics for the tracking table. A phase over thousands of tenants writes tens
    of thousands of rows faster than autovacuum gets to them, and the "newest attempt" questions of
    `status` and the dashboard were planned for a table of a thousand rows: twice as slow at 10,000
    tenants (150,000 rows: the dashboard 1.0 s before ANALYZE, 0.56 s after)."""
    from django_tenants.utils import get_public_schema_name

    with connection.cursor() as cursor:
        cursor.execute(
            db_render(
                sql.SQL("ANALYZE {}").format(sql.Identifier(get_public_schema_name(), MigrationRecord._meta.db_table))
            )
        )


def record_exclusions(phase: str, phase_number: int | None, tenant_ids: list[str], reason: str) -> None:
    """Set each tenant EXCLUDED and record it as a completed ``exclude`` step of ``phase``, together."""
    from django.db import transaction

    from tenants.models import MigrationState, Tenant

    if not tenant_ids:
        return
    now = timezone.now()
    with transaction.atomic():
        for tenant_id in tenant_ids:
            excluded = StepRef(phase, EXCLUDE)
            key = excluded.key(tenant_id)
            previous = MigrationRecord.objects.filter(migration_id=key).order_by("-attempt").first()
            MigrationRecord.objects.create(
                migration_id=key,
                description=f"Leave tenant {tenant_id} out of this and every later phase ({reason})",
                status=Status.COMPLETED,
                phase=phase,
                phase_number=phase_number,
                tenant_id=tenant_id,
                step=excluded.kind,
                attempt=(previous.attempt + 1) if previous else 1,
                started_at=now,
                completed_at=now,
                host=HOST,
                pid=os.getpid(),
                details=RowDetails(excluded_by=reason),
            )
        Tenant.objects.filter(tenant_id__in=tenant_ids).update(migration_state=MigrationState.EXCLUDED)


def record_deploy(schemas: int, failed: dict[str, str]) -> None:
    """Record a ``migrate_schemas`` run over ``schemas`` tenant schemas: FAILED with ``failed`` ({schema:
    reason}) when one failed or was refused, else COMPLETED, only to clear an earlier run's failures (a
    deploy that changes nothing worth knowing adds no row).

    Two deploy jobs may finish at once: the attempt number is taken under a transaction-level advisory
    lock on the step's key, so neither write is lost to the (migration_id, attempt) unique constraint.
    """
    from django.db import transaction

    now = timezone.now()
    summary = "; ".join(f"{schema}: {reason}" for schema, reason in sorted(failed.items()))
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [DEPLOY_KEY])
        previous = MigrationRecord.objects.filter(migration_id=DEPLOY_KEY).order_by("-attempt").first()
        if not failed and (previous is None or previous.status != Status.FAILED):
            return
        MigrationRecord.objects.create(
            migration_id=DEPLOY_KEY,
            description=f"migrate_schemas over {schemas} tenant schemas (a deploy)",
            status=Status.FAILED if failed else Status.COMPLETED,
            phase=DEPLOY.phase,
            step=DEPLOY.kind,
            attempt=(previous.attempt + 1) if previous else 1,
            started_at=now,
            completed_at=now,
            error_message=f"{len(failed)} tenant schemas not migrated: {summary}" if failed else None,
            host=HOST,
            pid=os.getpid(),
            details=DeployDetails(schemas=schemas, failed=failed),
        )


# --- ranges of a large table ----------------------------------------------------------------------------
#
# A step that splits a large table into key ranges (see StepReporter.ranges) records each range as a
# row of its own: migration_id ``<step key>/<index>`` with the step's phase, tenant and target, step
# ``copy_range`` or ``validate_range``, the planned rows in ``rows_expected``, the rows done in
# ``rows_copied``, the last committed key in ``checkpoint`` (written in the batch's transaction) and
# the bounds in ``details``. The plan is the set of these rows: written once in one transaction,
# then read back by every later attempt of the step, whatever its --jobs, until a rollback marks
# them ROLLED_BACK with the rest of the tenant's phase.


def range_key(step: Step, kind: str, index: int) -> str:
    return step.step_key.range(kind, index).migration_id


def recorded_ranges(step: Step, kind: str) -> list[tuple[KeyRange, StepRow, str]]:
    """The ranges an earlier attempt of ``step`` planned (none: not planned yet, or rolled back since),
    each with its newest attempt's row and status, in key order."""
    rows = (
        MigrationRecord.objects.filter(phase=step.phase, tenant_id=step.tenant_id, step=kind, target=str(step.target))
        .latest_attempts()
        .exclude(status=Status.ROLLED_BACK)
        .values_list(*RUNNER_FIELDS, "details", "checkpoint", "rows_copied", "rows_expected")
    )
    found = []
    for *values, details, checkpoint, rows_copied, rows_expected in rows:
        bounds = read_details(RowDetails, details)["range"]
        key_range = KeyRange(
            index=int(bounds["index"]),
            count=int(bounds["count"]),
            after=bounds.get("after"),
            through=bounds.get("through"),
            rows_planned=int(rows_expected or 0),
            resume_after=checkpoint,
            rows_done=int(rows_copied or 0),
        )
        found.append((key_range, StepRow(*values), str(values[3])))
    found.sort(key=lambda item: item[0].index)
    # A plan is whole or absent (written in one transaction); anything else is not a plan to follow.
    return found if found and len(found) == found[0][0].count else []


def _range_record(step: Step, kind: str, key_range: KeyRange, attempt: int) -> MigrationRecord:
    return _pending_attempt(
        step,
        kind=kind,
        migration_id=range_key(step, kind, key_range.index),
        description=f"{kind.replace('_', ' ')} {key_range.label} of {step.target}: keys after "
        f"{'-inf' if key_range.after is None else key_range.after} through "
        f"{'+inf' if key_range.through is None else key_range.through}",
        attempt=attempt,
        rows_expected=key_range.rows_planned,
        rows_copied=key_range.rows_done,
        checkpoint=key_range.resume_after,
        details=RowDetails(
            range=RangeBounds(
                index=key_range.index, count=key_range.count, after=key_range.after, through=key_range.through
            )
        ),
    )


def record_ranges(step: Step, kind: str, ranges: list[KeyRange]) -> dict[int, StepRow]:
    """New attempts (PENDING) for ``ranges``, carrying their bounds and how far each got, all in one
    transaction: a range plan is recorded whole or not at all."""
    from django.db import transaction

    keys = [range_key(step, kind, r.index) for r in ranges]
    previous = dict(
        MigrationRecord.objects.filter(migration_id__in=keys)
        .order_by()
        .values("migration_id")
        .annotate(last=Max("attempt"))
        .values_list("migration_id", "last")
    )
    with transaction.atomic():
        MigrationRecord.objects.bulk_create(
            [_range_record(step, kind, r, previous.get(key, 0) + 1) for key, r in zip(keys, ranges, strict=True)]
        )
    rows = MigrationRecord.objects.filter(migration_id__in=keys).latest_attempts().values_list(*RUNNER_FIELDS)
    by_key = {values[1]: StepRow(*values) for values in rows}
    return {r.index: by_key[key] for key, r in zip(keys, ranges, strict=True)}
