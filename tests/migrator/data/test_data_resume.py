"""Exactly once: phase 3 killed with SIGKILL in the middle of a copy, then rerun, ends equal to the source."""

from __future__ import annotations

import signal

from psycopg import sql

from migrator.models import DeferredConstraint, MigrationRecord, Status
from migrator.tables import TENANT_DATA_TABLES
from tests.helpers import run
from tests.migrator.helpers import (
    TABLES,
    attempts,
    content,
    count,
    kill_when,
    manage_env,
    plain_columns,
    psycopg_connect,
    start_manage,
    value,
    wait_for,
    wait_for_killed_sessions_to_end,
    wrongly_remapped,
)

TENANTS = ["acme_0001", "globex_0002"]
CONTACTS, ACTIVITIES = 4_000, 8_000
SOURCE_ROWS = {"contact_data_contacts": CONTACTS, "activity_data_activities": ACTIVITIES}


def test_a_run_killed_in_the_middle_of_a_copy_resumes_exactly_once(larger_schemas_ready):
    assert (larger_schemas_ready["contacts"], larger_schemas_ready["activities"]) == (CONTACTS, ACTIVITIES)

    with psycopg_connect() as watcher:
        ours = [
            r[0]
            for r in watcher.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()").fetchall()
        ]

        def partly_copied() -> tuple[int, str, int] | None:
            return watcher.execute(
                "SELECT id, target, rows_copied FROM public.schema_migrations WHERE step = 'copy_table' "
                "AND status = 'RUNNING' AND rows_copied > 0 AND rows_copied < rows_expected "
                "ORDER BY id LIMIT 1"
            ).fetchone()

        killed_id, target, copied_before_kill = kill_when(
            ["migrate_phase", "data", "--batch-size", "200", "--noinput"],
            partly_copied,
            "a copy_table step half way",
            env=manage_env(),
            interval=0.002,
        )
        # the server notices the dead client and rolls back its open batch; wait until its sessions are gone
        wait_for_killed_sessions_to_end(watcher, ours)

    killed = MigrationRecord.objects.get(pk=killed_id)
    assert killed.status == Status.RUNNING  # as the killed process left it
    assert killed.rows_expected == SOURCE_ROWS[target]  # known while the step ran
    assert 0 < killed.rows_copied < SOURCE_ROWS[target]
    assert killed.checkpoint
    assert DeferredConstraint.objects.filter(table_name=target).exists()  # its indexes are still dropped
    tenant_schema = f"tenant_{killed.tenant_id}"
    assert count(tenant_schema, target) == killed.rows_copied  # the checkpoint committed with its batch

    run("migrate_phase", "data", interactive=False, batch_size=5000)

    killed.refresh_from_db()
    assert killed.status == Status.FAILED
    assert killed.error_message.startswith("interrupted:")
    assert killed.rows_copied >= copied_before_kill  # its progress stays on record
    retry = attempts(killed.migration_id)[-1]
    assert (retry.attempt, retry.status) == (killed.attempt + 1, Status.COMPLETED)
    assert retry.details["resumed_after"] == [killed.checkpoint]  # resumed, not restarted
    assert retry.rows_copied == retry.rows_expected == SOURCE_ROWS[target]
    for tenant in TENANTS:
        schema = f"tenant_{tenant}"
        for legacy, (table, *_rest) in TABLES.items():
            source = content(schema, legacy, plain_columns(legacy))
            assert source[0] == source[1] == SOURCE_ROWS[table]
            assert content(schema, table, plain_columns(legacy)) == source, f"{schema}.{table}"
            assert wrongly_remapped(schema, legacy) == 0
    assert not DeferredConstraint.objects.exists()
    assert (
        value(
            sql.SQL("SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND tablename = %s"), [tenant_schema, target]
        )
        == 4
    )
    assert (
        not MigrationRecord.objects.filter(phase="data").exclude(status=Status.COMPLETED).exclude(pk=killed.pk).exists()
    )


def test_sigint_during_a_copy_stops_after_the_running_steps_in_one_line_and_a_rerun_finishes(larger_schemas_ready):
    child = start_manage("migrate_phase", "data", "--noinput", "--batch-size", "200", env=manage_env())
    wait_for(
        lambda: MigrationRecord.objects.filter(phase="data", step="copy_table", status=Status.RUNNING).exists(),
        timeout=120,
        interval=0.05,
        what="a copy to start",
    )
    child.send_signal(signal.SIGINT)
    code = child.wait(timeout=300)
    stderr = child.stderr.read() if child.stderr else ""

    assert code == 1, stderr
    assert "stopping: the running steps finish" in stderr
    last = stderr.strip().splitlines()[-1]
    assert "stopped on request:" in last, stderr
    assert "rerun `migrate_phase data --noinput` to resume" in last  # as it was run
    left = MigrationRecord.objects.filter(phase="data").latest_attempts().exclude(status=Status.COMPLETED)
    assert left.exists()  # it did stop early
    assert not left.filter(status__in=[Status.RUNNING, Status.FAILED]).exists()  # and cleanly

    run("migrate_phase", "data", interactive=False)
    for spec in TENANT_DATA_TABLES:
        for tenant in ("acme_0001", "globex_0002"):
            assert count(f"tenant_{tenant}", spec.target_table) == count(f"tenant_{tenant}", spec.legacy_table)


def test_a_rebuild_cut_short_by_the_server_says_so_and_a_rerun_finishes_it(larger_schemas_ready):
    """A cancelled or terminated CREATE INDEX is no fault of the rows: the advice was to fix them, roll the
    tenant back and copy it all again."""
    # small batches: the copy lasts long enough (160 batches) for the lock to be taken before its rebuild
    child = start_manage("migrate_phase", "data", "--noinput", "--tenant", "acme_0001", "--batch-size", "25")
    with psycopg_connect() as holder, psycopg_connect() as watcher:
        wait_for(
            lambda: MigrationRecord.objects.filter(
                phase="data",
                step="copy_table",
                target="contact_data_contacts",
                status=Status.RUNNING,
                rows_copied__gt=0,
            ).exists(),
            timeout=120,
            what="the contacts copy to be under way",
        )
        holder.autocommit = False  # its rows are written meanwhile; its index rebuild waits for this lock
        holder.execute("LOCK TABLE tenant_acme_0001.contact_data_contacts IN ROW EXCLUSIVE MODE")
        rebuilding = wait_for(
            lambda: watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
                "AND query LIKE 'CREATE%%INDEX%%'"
            ).fetchone(),
            timeout=120,
            what="the index rebuild to wait for the lock",
        )
        watcher.execute("SELECT pg_cancel_backend(%s)", [rebuilding[0]])
        assert child.wait(timeout=60) == 1
        holder.rollback()
    error = (child.stderr.read() if child.stderr else "").strip().splitlines()[-1]
    assert "rebuilding its indexes and foreign keys failed: canceling statement" in error
    assert "break" not in error
    assert "rerun `migrate_phase data`" in error

    run("migrate_phase", "data", "--tenant", "acme_0001", interactive=False)
    assert count("tenant_acme_0001", "contact_data_contacts") == count("tenant_acme_0001", "contacts")
    assert not DeferredConstraint.objects.exists()


def test_a_second_sigint_stops_at_once_while_a_step_waits_for_a_lock(schemas_ready):
    """The first Ctrl-C lets the running step finish; a step waiting for an application's lock can take as long
    as that transaction does, and the second Ctrl-C is the operator's way out (docs/reliability.md)."""
    with psycopg_connect() as holder, holder.transaction():
        holder.execute("LOCK TABLE tenant_globex_0002.activities IN ACCESS EXCLUSIVE MODE")
        child = start_manage("migrate_phase", "data", "--noinput", "--jobs", "1", env=manage_env())
        wait_for(
            lambda: value(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = "
                "'Lock' AND query ILIKE %s",
                ["%activities%"],
            ),
            timeout=60,
            what="the copy to wait for the lock",
        )
        child.send_signal(signal.SIGINT)
        wait_for(lambda: "stopping" in (child.stderr.readline() if child.stderr else ""), what="the first stop")
        child.send_signal(signal.SIGINT)
        code = child.wait(timeout=10)  # with the lock still held
        stderr = child.stderr.read() if child.stderr else ""
    assert code == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("CommandError: interrupted"), stderr
    assert "rerun `migrate_phase data --noinput` to resume" in last

    run("migrate_phase", "data", interactive=False)  # resumed as a killed run is
    for spec in TENANT_DATA_TABLES:
        for tenant in schemas_ready["tenants"]:
            assert count(f"tenant_{tenant}", spec.target_table) == count(f"tenant_{tenant}", spec.legacy_table)
