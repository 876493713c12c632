"""Verify reads what its tenant checks need for 10 tenants at a time (tables, row counts, validated
counts, grants, plans) and runs each tenant's checks in one schema context: a run killed while a batch
reads leaves every tenant of it as it was, a tenant whose table is missing fails only its own checks,
and a tenant's checks cost a bounded number of queries. Phase 3 records a tenant's validations with
its new state, in one statement after its copies."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from psycopg import sql

from migrator import db
from migrator.config import get_config
from migrator.core.context import MigrationContext
from migrator.engine import tracking
from migrator.engine.runner import PhaseRunner
from migrator.models import MigrationRecord, Status
from migrator.phases.verify import TENANT_CHECKS, VerifyPhase
from migrator.tables import TENANT_DATA_TABLES
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.helpers import kill_while_it_waits_for_a_lock, psycopg_connect
from tests.migrator.scale.support import kill_at_the_end_of, statuses

BLOCKED = "globex_0002"
CONTACTS = TENANT_DATA_TABLES[0].table


def tenant_checks_again(tenants: list[str]) -> None:
    """The tenants' verify checks to be done again (as a rollback of the phase leaves them); the
    phase-wide steps stay done."""
    tracking.mark_rolled_back(["verify"], tenants)
    MigrationRecord.objects.filter(phase="verify", tenant_id__isnull=True).update(status=Status.COMPLETED)
    Tenant.objects.filter(tenant_id__in=tenants).update(migration_state=MigrationState.SECURED)


def test_verify_killed_while_a_batch_reads_resumes_every_tenant_of_it(migrated: dict[str, Any]) -> None:
    tenants = migrated["tenants"]
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    tenant_checks_again(tenants)
    with psycopg_connect() as holder, psycopg_connect() as watcher:
        holder.execute("BEGIN")  # the batch's row counts wait for this lock, until the kill
        holder.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(f"tenant_{BLOCKED}", CONTACTS))
        )
        kill_while_it_waits_for_a_lock(
            ["migrate_phase", "verify", "--noinput", "--jobs", "1"],
            watcher,
            "verify's batch to wait for the locked table",
            query_like="salesflow_count_rows",
            terminate_the_waiting_session=True,
        )
        holder.execute("ROLLBACK")

    for tenant in tenants:  # nothing of the batch was recorded: every tenant is as the kill found it
        assert statuses("verify", tenant) == {Status.PENDING}
        assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.SECURED

    run("migrate_phase", "verify", interactive=False)

    for tenant in tenants:
        assert statuses("verify", tenant) == {Status.COMPLETED}
        assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.VERIFIED
    for kind in TENANT_CHECKS:
        record = MigrationRecord.objects.filter(phase="verify", tenant_id=BLOCKED, step=kind).latest_attempts().get()
        assert record.details["problems"] == []
        assert record.started_at
        assert record.completed_at
        assert record.duration is not None


def test_a_tenant_with_a_missing_table_fails_only_its_own_checks_in_the_batch(migrated: dict[str, Any]) -> None:
    tenants = migrated["tenants"]
    run("migrate_phase", "security", interactive=False)
    # The batch's row counts and grant reads fail on it: each check then asks on its own.
    db.execute(sql.SQL("DROP TABLE {} CASCADE").format(sql.Identifier(f"tenant_{BLOCKED}", CONTACTS)))

    with pytest.raises(CommandError, match="phase verify failed"):
        run("migrate_phase", "verify", interactive=False)

    for tenant in tenants:
        if tenant == BLOCKED:
            continue
        assert statuses("verify", tenant) == {Status.COMPLETED}
        assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.VERIFIED
    assert Tenant.objects.get(tenant_id=BLOCKED).migration_state == MigrationState.FAILED
    missing = MigrationRecord.objects.filter(phase="verify", tenant_id=BLOCKED, step="tenant_tables").get()
    assert missing.status == Status.FAILED
    assert missing.error_message == f"tenant_{BLOCKED}.{CONTACTS} is missing"


def test_a_tenants_checks_take_few_queries(migrated: dict[str, Any]) -> None:
    """55 queries per tenant before the batches (8 of them switching the search_path); now 16 at most with
    the two data tables (BEGIN and ROLLBACK of the smoke test counted; its ORM count is one per data table),
    plus the batch's reads and the run's bookkeeping."""
    tenants = migrated["tenants"]
    run("migrate_phase", "security", interactive=False)
    phase = VerifyPhase()
    ctx = MigrationContext(config=get_config())
    steps = [step for step in phase.plan(ctx) if step.tenant_id is not None]

    with CaptureQueriesContext(connection) as captured:
        outcome = PhaseRunner(ctx).run(phase, steps)

    assert outcome.ok, outcome.failed
    assert len(outcome.completed) == len(TENANT_CHECKS) * len(tenants)
    statements = [query["sql"] for query in captured.captured_queries]
    per_tenant = 14 + len(TENANT_DATA_TABLES)
    assert len(statements) <= per_tenant * len(tenants) + 24, "\n".join(statements)
    assert sum(s.startswith("SET search_path") for s in statements) <= 2 * len(tenants) + 1
    for tenant in tenants:
        assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.VERIFIED


def test_data_killed_before_a_tenants_validations_are_recorded_validates_it_again(
    schemas_ready: dict[str, Any],
) -> None:
    """Phase 3's validations write no RUNNING row: they are recorded with the tenant's state in one
    statement after its copies. Killed while that statement waits: the copies stay done, the
    validations PENDING, the tenant in its earlier state; the rerun validates it (and copies nothing)."""
    tenants = schemas_ready["tenants"]
    kill_at_the_end_of(BLOCKED, "data")

    copies = MigrationRecord.objects.filter(phase="data", tenant_id=BLOCKED, step="copy_table").latest_attempts()
    assert {record.status for record in copies} == {Status.COMPLETED}
    validations = MigrationRecord.objects.filter(phase="data", tenant_id=BLOCKED, step="validate").latest_attempts()
    assert {record.status for record in validations} == {Status.PENDING}
    assert Tenant.objects.get(tenant_id=BLOCKED).migration_state == MigrationState.SCHEMAS_READY
    copied = {
        t.table: db.fetchvalue(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"tenant_{BLOCKED}", t.table)))
        for t in TENANT_DATA_TABLES
    }

    run("migrate_phase", "data", interactive=False)

    for tenant in tenants:
        assert statuses("data", tenant) == {Status.COMPLETED}
        assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.DATA_MIGRATED
    assert MigrationRecord.objects.filter(phase="data", tenant_id=BLOCKED, step="copy_table").count() == len(copies)
    for record in MigrationRecord.objects.filter(phase="data", tenant_id=BLOCKED, step="validate").latest_attempts():
        assert record.source_fingerprint == record.target_fingerprint
        assert record.rows_copied == copied[record.target]
        assert record.started_at
        assert record.completed_at
