"""A whale tenant migrated online: its large tables are backfilled in key ranges on every ``--jobs``
connection while the application writes them, validated in ranges once in two-way sync, and compared in
ranges again at cutover (which still blocks no write); a SIGKILL half way through a range resumes
exactly, with another ``--jobs``."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from migrator.models import MigrationRecord, Status
from migrator.ops import twoway
from migrator.reports.status import status_report
from migrator.tables import TENANT_DATA_TABLES
from tests.helpers import run
from tests.migrator.helpers import (
    count,
    kill_when,
    manage_env,
    psycopg_connect,
    ranged_copy_half_way,
    value,
    wait_for_killed_sessions_to_end,
)
from tests.migrator.online.writer import (
    Writer,
    assert_committed_writes_in_new_tables,
    assert_sides_equal,
    writing,
)

TENANTS = ["tenant_acme_0001", "tenant_globex_0002"]
RANGE_ROWS = 1_000  # 4,000 contacts and 8,000 activities per tenant: 4 and 8 ranges
RANGED_TABLES = {"contact_data_contacts": 4, "activity_data_activities": 8}
# Their legacy names. Another large legacy table, if the registry has one, is ranged too: its own ranges,
# not counted here.
LEGACY_RANGED = {"contact_data_contacts": "contacts", "activity_data_activities": "activities"}


def of_stage_tables(in_ranges: dict[str, int]) -> dict[str, int]:
    """``compared_in_ranges`` (by legacy table) of the stage's large tables."""
    return {table: count for table, count in in_ranges.items() if table in LEGACY_RANGED.values()}


@pytest.fixture
def whales(larger_schemas_ready: dict[str, int], settings: Any) -> None:
    """Two tenants whose tables are split into ranges of RANGE_ROWS rows, phases 1 and 2 done."""
    assert (larger_schemas_ready["contacts"], larger_schemas_ready["activities"]) == (4_000, 8_000)
    settings.SALESFLOW = {**settings.SALESFLOW, "RANGE_ROWS": RANGE_ROWS}


def latest_rows(phase: str, step: str, schema: str) -> list[MigrationRecord]:
    return list(
        MigrationRecord.objects.filter(phase=phase, step=step, tenant_id=schema.removeprefix("tenant_"))
        .latest_attempts()
        .order_by("target", "migration_id")
    )


def assert_whales_in_sync(writer: Writer) -> None:
    assert writer.errors == []
    assert writer.deadlocks == 0
    assert writer.phones  # the writer updated contacts in the ranges being copied
    assert_committed_writes_in_new_tables(writer)
    for schema in TENANTS:
        assert twoway.is_synced(schema), schema
        assert_sides_equal(schema)


def test_a_whale_is_backfilled_validated_and_compared_in_ranges_while_it_is_written(whales):
    globex_contacts = sql.Identifier("tenant_globex_0002", "contacts")  # the writer writes acme
    with writing() as writer:
        run("migrate_phase", "data", "--online", "--batch-size", "300", "--jobs", "2", interactive=False)
        run("migrate_phase", "security", interactive=False)
        run("migrate_phase", "verify", interactive=False)
        assert_ranged_backfill()

        # A write that bypassed the sync in the middle of a range is found by cutover's ranged comparison.
        with psycopg_connect() as conn:
            conn.execute("SET session_replication_role = replica")
            before = conn.execute(sql.SQL("SELECT phone FROM {} WHERE id = 2500").format(globex_contacts)).fetchone()
            conn.execute(sql.SQL("UPDATE {} SET phone = 'bypassed' WHERE id = 2500").format(globex_contacts))
        with pytest.raises(Exception, match=r"differing keys 2500; nothing was switched"):
            run("migrate_phase", "cutover", "--jobs", "2", interactive=False)
        assert twoway.is_synced("tenant_globex_0002")

        with psycopg_connect() as conn:  # the operator puts the row back as the new side has it
            conn.execute("SET session_replication_role = replica")
            conn.execute(sql.SQL("UPDATE {} SET phone = %s WHERE id = 2500").format(globex_contacts), before)
        run("migrate_phase", "cutover", "--jobs", "2", interactive=False)
    assert_whales_in_sync(writer)
    for schema in TENANTS:
        [switched] = latest_rows("cutover", "archive_legacy", schema)
        assert switched.status == Status.COMPLETED
        in_ranges = of_stage_tables(switched.details["compared_in_ranges"])  # by legacy table
        assert in_ranges.keys() == {"contacts", "activities"}
        assert in_ranges["contacts"] >= 4
        assert in_ranges["activities"] >= 8
        assert switched.details["writes_blocked_ms"] == 0
        # each table with its own plan
        compared = [r for r in latest_rows("cutover", "validate_range", schema) if r.target in RANGED_TABLES]
        assert sorted(r.target for r in compared) == sorted(
            [
                *["contact_data_contacts"] * in_ranges["contacts"],
                *["activity_data_activities"] * in_ranges["activities"],
            ]
        )
        assert {r.status for r in compared} == {Status.COMPLETED}
        assert all(r.source_fingerprint == r.target_fingerprint for r in compared)


def assert_ranged_backfill() -> None:
    for schema in TENANTS:
        tenant = schema.removeprefix("tenant_")
        copies = latest_rows("data", "copy_range", schema)
        validations = latest_rows("data", "validate_range", schema)
        assert {r.status for r in copies + validations} == {Status.COMPLETED}
        for table, at_least in RANGED_TABLES.items():  # the writer's inserts can add a range to acme's plan
            ranges = len([r for r in copies if r.target == table])
            assert ranges >= at_least
            copied = MigrationRecord.objects.get(migration_id=f"data/{tenant}/copy_table/{table}")
            assert (copied.status, copied.details["ranges"]) == (Status.COMPLETED, ranges)
            validated = MigrationRecord.objects.filter(migration_id=f"data/{tenant}/validate/{table}").latest_attempts()
            # planned again from the statistics (not the count): the writer's rows may not be in them yet
            validated_ranges = len([r for r in validations if r.target == table])
            assert validated_ranges >= at_least
            assert [(v.status, v.details["ranges"]) for v in validated] == [(Status.COMPLETED, validated_ranges)]


def test_a_whale_killed_half_way_through_an_online_range_resumes_exactly_with_another_jobs(whales):
    with writing() as writer, psycopg_connect() as watcher:
        ours = [r[0] for r in watcher.execute("SELECT pid FROM pg_stat_activity").fetchall()]
        tenant, table, _range = kill_when(
            ["migrate_phase", "data", "--online", "--batch-size", "100", "--jobs", "2", "--noinput"],
            lambda: ranged_copy_half_way(watcher),
            "a ranged online copy half way",
            env=manage_env(SALESFLOW_RANGE_ROWS=str(RANGE_ROWS)),
            timeout=90,
            interval=0.002,
        )
        wait_for_killed_sessions_to_end(watcher, ours, keep_test_clients=True)
        schema = f"tenant_{tenant}"
        assert value("SELECT count(*) FROM migrator_online.captured_tables") > 0  # the capture survived the kill
        # every range's checkpoint committed with its batch: the target holds exactly the rows they account for
        done = [r for r in latest_rows("data", "copy_range", schema) if r.target == table]
        assert count(schema, table) == sum(r.rows_copied or 0 for r in done)
        run("migrate_phase", "data", "--online", "--batch-size", "500", "--jobs", "1", interactive=False)
    assert_whales_in_sync(writer)
    resumed = [r for r in latest_rows("data", "copy_range", schema) if r.target == table]
    # the plan recorded by the killed run, followed by the rerun
    assert [r.migration_id for r in resumed] == [r.migration_id for r in done]
    assert {r.status for r in resumed} == {Status.COMPLETED}
    # no key twice: the new table's primary key was rebuilt over the ranges
    assert value(sql.SQL("SELECT count(*) - count(DISTINCT id) FROM {}").format(sql.Identifier(schema, table))) == 0


def test_a_cutover_killed_while_it_compares_a_whale_shows_its_ranges_and_a_rerun_switches_it(whales, settings):
    run("migrate_phase", "data", "--online", "--batch-size", "1000", "--jobs", "2", interactive=False)
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    with psycopg_connect() as watcher:
        ours = [r[0] for r in watcher.execute("SELECT pid FROM pg_stat_activity").fetchall()]
        kill_when(
            ["migrate_phase", "cutover", "--jobs", "2", "--noinput"],
            lambda: watcher.execute(
                "SELECT 1 FROM public.schema_migrations WHERE phase = 'cutover' AND step = 'validate_range' "
                "AND status = 'COMPLETED' LIMIT 1"
            ).fetchone(),
            "cutover comparing a whale's ranges",
            env=manage_env(SALESFLOW_RANGE_ROWS="200"),  # 20 and 40 ranges a tenant: killed with some left
            timeout=90,
            interval=0.002,
        )
        wait_for_killed_sessions_to_end(watcher, ours)
    shown = [t for t in status_report().ranged if t.what == "cutover comparison"]
    assert shown, status_report().ranged
    assert all(t.ranges_done < len(t.ranges) for t in shown)
    assert {t.table for t in shown} <= {spec.target_table for spec in TENANT_DATA_TABLES}
    for schema in TENANTS:
        assert twoway.is_synced(schema)  # the comparison changes nothing

    settings.SALESFLOW = {**settings.SALESFLOW, "RANGE_ROWS": 200}
    run("migrate_phase", "cutover", "--jobs", "1", interactive=False)
    assert not [t for t in status_report().ranged if t.what == "cutover comparison"]
    for schema in TENANTS:
        [switched] = latest_rows("cutover", "archive_legacy", schema)
        assert switched.status == Status.COMPLETED
        assert of_stage_tables(switched.details["compared_in_ranges"]) == {"contacts": 20, "activities": 40}
        assert_sides_equal(schema)
