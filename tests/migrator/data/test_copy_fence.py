"""Reliability: exactly once does not rest on the migrator lock alone.

The lock's idle connection is ended by the server (``pg_terminate_backend``) while a run is in the
middle of a copy, and a second run is admitted at once. The first run stops at its next batch with
one line; the second cannot write the table the first is still writing; a final run ends equal to
the source, no row twice, none missing.
"""

from __future__ import annotations

import subprocess

from migrator.tables import TENANT_DATA_TABLES
from tests.helpers import run
from tests.migrator.helpers import (
    TABLES,
    content,
    one_line,
    plain_columns,
    psycopg_connect,
    start_manage,
    wait_for,
    wrongly_remapped,
)

TENANTS = ["acme_0001", "globex_0002"]
CONTACTS, ACTIVITIES = 4_000, 8_000
SOURCE_ROWS = {"contact_data_contacts": CONTACTS, "activity_data_activities": ACTIVITIES}


def start_data_run() -> subprocess.Popen[str]:
    return start_manage("migrate_phase", "data", "--batch-size", "200", "--noinput")


def test_a_run_that_lost_its_lock_stops_and_a_second_run_never_duplicates_a_row(larger_schemas_ready):
    assert (larger_schemas_ready["contacts"], larger_schemas_ready["activities"]) == (CONTACTS, ACTIVITIES)

    first = second = None
    with psycopg_connect() as watcher, psycopg_connect() as blocker:
        try:
            first = start_data_run()

            def partly_copied() -> tuple[str, str] | None:
                if first.poll() is not None:
                    raise AssertionError(f"the run ended before its lock could be taken away: {first.stderr.read()!r}")
                # activities: nothing references their primary key, so it is dropped during the load
                # and a duplicate would not be refused by the table itself
                return watcher.execute(
                    "SELECT tenant_id, target FROM public.schema_migrations WHERE step = 'copy_table' "
                    "AND target = %s AND status = 'RUNNING' AND rows_copied > 0 AND rows_copied < rows_expected / 2 "
                    "ORDER BY id LIMIT 1",
                    [TABLES["activities"][0]],
                ).fetchone()

            tenant_id, target = wait_for(partly_copied, timeout=60, interval=0.002, what="a copy_table step under way")
            # Hold the first run between two batches of that table, so both runs are on it at once.
            blocker.autocommit = False
            blocker.execute(f'LOCK TABLE "tenant_{tenant_id}"."{target}" IN SHARE MODE')

            def waiting_on_the_table() -> int:
                return watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> %s",
                    [blocker.info.backend_pid],
                ).fetchone()[0]

            wait_for(waiting_on_the_table, timeout=30, what="the first run's next batch to wait for the table")
            terminated = watcher.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'salesflow-migrator data%%'"
            ).fetchall()
            assert terminated == [(True,)]

            second = start_data_run()  # admitted: the lock went with its connection

            def both_on_the_table_or_second_done() -> bool:
                return second.poll() is not None or waiting_on_the_table() >= 2

            wait_for(
                both_on_the_table_or_second_done, timeout=90, interval=0.02, what="the second run to reach the table"
            )
            blocker.rollback()
            first_err = first.communicate(timeout=120)[1]
            second_err = second.communicate(timeout=120)[1]
        finally:
            for child in (first, second):
                if child is not None and child.poll() is None:
                    child.kill()
                    child.wait()

    assert first.returncode != 0
    first_error = first_err.strip().splitlines()[-1]
    assert one_line(first_error), first_err
    assert "lost the migrator lock" in first_error, first_err
    assert second.returncode != 0  # it could not write the table the first one was writing
    assert "is being written by another migrate_phase" in second_err, second_err

    run("migrate_phase", "data", interactive=False, batch_size=5000)

    for tenant in TENANTS:
        schema = f"tenant_{tenant}"
        for entry in TENANT_DATA_TABLES:
            legacy, table = entry.legacy_table, entry.table
            source = content(schema, legacy, plain_columns(legacy))
            assert source[0] == source[1] > 0  # every id once
            assert content(schema, table, plain_columns(legacy)) == source, f"{schema}.{table}"
            assert wrongly_remapped(schema, legacy) == 0
            if table in SOURCE_ROWS:
                assert source[0] == SOURCE_ROWS[table]
