"""Large tables in key ranges: planned from statistics, balanced on skewed keys, copied and validated by
every --jobs connection, resumed exactly after SIGKILL with another --jobs."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from psycopg import sql

from migrator import db
from migrator.core.context import TenantRef
from migrator.engine import tracking
from migrator.models import DeferredConstraint, MigrationRecord, Status
from migrator.ops import fingerprint
from migrator.ops.ranges import plan_key_ranges
from migrator.phases.data import tenant_copy
from migrator.reports.dashboard import build_dashboard
from migrator.reports.status import status_report
from migrator.tables import TENANT_DATA_TABLES
from tests.helpers import run
from tests.migrator.helpers import (
    TABLES,
    content,
    count,
    kill_when,
    manage_env,
    plain_columns,
    psycopg_connect,
    ranged_copy_half_way,
    value,
    wait_for_killed_sessions_to_end,
    wrongly_remapped,
)

TENANTS = ["acme_0001", "globex_0002"]
CONTACTS, ACTIVITIES = 4_000, 8_000
SOURCE_ROWS = {"contact_data_contacts": CONTACTS, "activity_data_activities": ACTIVITIES}
SKEW = sql.Identifier("skew_test", "keys")


def rows_in_each(ranges: list[Any]) -> list[int]:
    """The rows of the skew test's table that each range holds, counted."""
    return [
        value(
            sql.SQL("SELECT count(*) FROM {} WHERE id > %s AND id <= %s").format(SKEW),
            [-(2**63) if r.after is None else r.after, 2**63 - 1 if r.through is None else r.through],
        )
        for r in ranges
    ]


@pytest.fixture
def skewed_table(clean_db: None) -> Any:
    """60,000 rows: 90 % of the ids in 1..54,000, the other 10 % spread over 1..10^9 above them."""
    db.execute(sql.SQL("CREATE SCHEMA skew_test"))
    db.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, payload text)").format(SKEW))
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, 'x' FROM generate_series(1, 54000) g "
            "UNION ALL SELECT 1000000 + g * 166000, 'y' FROM generate_series(1, 6000) g"
        ).format(SKEW)
    )
    return


def test_a_skewed_key_distribution_splits_into_balanced_ranges(skewed_table):
    # Never analyzed: planning analyzes the key column (a sample), and counts nothing.
    assert value("SELECT reltuples FROM pg_class WHERE oid = 'skew_test.keys'::regclass") < 0
    ranges = plan_key_ranges("skew_test", "keys", "id", range_rows=6_000)
    assert len(ranges) == 10
    assert (ranges[0].after, ranges[-1].through) == (None, None)  # every key, also beyond the sampled ones
    assert all(a.through == b.after for a, b in itertools.pairwise(ranges))
    in_each = rows_in_each(ranges)
    assert sum(in_each) == 60_000
    # Equal-width ranges over 1..10^9 would put 54,000 rows in the first; these hold 6,000 each, give or
    # take the sampling error of ANALYZE's 30,000-row sample.
    assert max(in_each) <= 1.25 * 6_000, in_each
    assert min(in_each) >= 0.75 * 6_000, in_each
    assert all(r.rows_planned == 6_000 for r in ranges)
    # A table within the setting is not split.
    assert plan_key_ranges("skew_test", "keys", "id", range_rows=60_000) == []


def test_statistics_of_a_table_that_grew_since_with_its_row_estimate_kept_right_are_taken_again(clean_db):
    """1,000 rows analyzed, then 20,000 more and a VACUUM (the row estimate right, the histogram still over
    ids 1..1,000): planned from it, one range held nearly every row."""
    db.execute(sql.SQL("CREATE SCHEMA skew_test"))
    db.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, payload text)").format(SKEW))
    db.execute(sql.SQL("INSERT INTO {} SELECT g, 'x' FROM generate_series(1, 1000) g").format(SKEW))
    db.execute(sql.SQL("ANALYZE {}").format(SKEW))
    db.execute(sql.SQL("INSERT INTO {} SELECT g, 'y' FROM generate_series(1001, 21000) g").format(SKEW))
    db.execute(sql.SQL("VACUUM {}").format(SKEW))
    assert value("SELECT reltuples FROM pg_class WHERE oid = 'skew_test.keys'::regclass") == 21_000

    ranges = plan_key_ranges("skew_test", "keys", "id", range_rows=3_000, rows=21_000)

    in_each = rows_in_each(ranges)
    assert len(ranges) == 7
    assert sum(in_each) == 21_000
    assert max(in_each) <= 1.25 * 3_000, in_each


def range_rows(kind: str, tenant: str | None = None) -> list[MigrationRecord]:
    rows = MigrationRecord.objects.filter(phase="data", step=kind).latest_attempts()
    if tenant:
        rows = rows.filter(tenant_id=tenant)
    return list(rows.order_by("target", "migration_id"))


def assert_copied_exactly(tenants: list[str]) -> None:
    for tenant in tenants:
        schema = f"tenant_{tenant}"
        for legacy, (table, *_rest) in TABLES.items():
            source = content(schema, legacy, plain_columns(legacy))
            assert source[0] == source[1] == SOURCE_ROWS[table]
            target = content(schema, table, plain_columns(legacy))
            assert target == source, f"{schema}.{table}"  # same rows, each id once
            assert wrongly_remapped(schema, legacy) == 0
            assert (
                value(
                    sql.SQL("SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND tablename = %s"), [schema, table]
                )
                == 4
            )
    assert not DeferredConstraint.objects.exists()


def test_a_large_table_is_copied_and_validated_in_ranges_on_every_connection(larger_schemas_ready, settings):
    settings.SALESFLOW = {**settings.SALESFLOW, "RANGE_ROWS": 1_000}
    out = run("migrate_phase", "data", interactive=False, jobs=3, batch_size=300, verbosity=2)

    assert_copied_exactly(TENANTS)
    # a ranged validation says how far it got, range by range, as a copy does batch by batch
    assert re.search(r"validate activity_data_activities \.\.\. [\d,]+/8,000 rows", out), out
    # the stage's large tables (another legacy table may be ranged too: its own rows, not counted here)
    copies = [r for r in range_rows("copy_range") if r.target in SOURCE_ROWS]
    # 4,000 contacts in 4 ranges and 8,000 activities in 8, per tenant; all done, rows as planned
    assert len(copies) == 2 * (4 + 8)
    assert {r.status for r in copies} == {Status.COMPLETED}
    for tenant in TENANTS:
        for table, rows in SOURCE_ROWS.items():
            mine = [r for r in copies if r.tenant_id == tenant and r.target == table]
            assert sum(r.rows_copied for r in mine) == rows
            assert sum(r.rows_expected for r in mine) == rows  # planned from the statistics and the count
            assert {r.details["range"]["count"] for r in mine} == {len(mine)}
            assert mine[0].checkpoint is not None
    step = MigrationRecord.objects.get(migration_id="data/acme_0001/copy_table/activity_data_activities")
    assert step.details["ranges"] == 8
    assert step.rows_copied == ACTIVITIES

    validations = [r for r in range_rows("validate_range") if r.target in SOURCE_ROWS]
    assert len(validations) == 2 * (4 + 8)
    assert {r.status for r in validations} == {Status.COMPLETED}
    for tenant in TENANTS:
        for spec in TENANT_DATA_TABLES:
            validate = MigrationRecord.objects.get(migration_id=f"data/{tenant}/validate/{spec.target_table}")
            assert validate.status == Status.COMPLETED
            if spec.target_table not in SOURCE_ROWS:
                continue
            assert validate.details["ranges"] > 1
            # the ranges' fingerprints add up to the whole table's, as cutover computes it
            source, target = fingerprint.both_fingerprints(tenant_copy(TenantRef(tenant), spec))
            assert validate.source_fingerprint == validate.target_fingerprint == str(source) == str(target)


def test_a_tenant_copied_again_in_fewer_ranges_after_a_rollback_is_migrated(larger_schemas_ready, settings):
    """The next copy plans its ranges again: the earlier plan's ranges beyond its last, rolled back, are not
    work left (they kept the tenant's phase 3 pending for good, and phase 4 refused it)."""
    settings.SALESFLOW = {**settings.SALESFLOW, "RANGE_ROWS": 1_000}
    run("migrate_phase", "data", interactive=False, batch_size=300)
    run("migrate_phase", "rollback", "--tenant", "acme_0001", interactive=False)
    run("migrate_phase", "schemas", interactive=False)
    settings.SALESFLOW = {**settings.SALESFLOW, "RANGE_ROWS": 2_000}
    run("migrate_phase", "data", interactive=False, batch_size=300)

    assert_copied_exactly(TENANTS)
    acme = [r for r in range_rows("copy_range") if r.tenant_id == "acme_0001" and r.target in SOURCE_ROWS]
    assert {r.status for r in acme} == {Status.COMPLETED, Status.ROLLED_BACK}  # the earlier plan's tail stays
    assert tracking.latest_statuses(["data"])[("data", "acme_0001")] == {Status.COMPLETED}
    run("migrate_phase", "security", interactive=False)  # not refused: phase 3 is done for every tenant


def test_a_range_that_differs_fails_the_table_validation_with_its_keys(larger_schemas_ready, settings):
    settings.SALESFLOW = {**settings.SALESFLOW, "RANGE_ROWS": 1_000}
    run("migrate_phase", "data", interactive=False, jobs=2, batch_size=1000)
    db.execute("UPDATE tenant_acme_0001.contact_data_contacts SET first_name = 'changed' WHERE id = 3001")
    with pytest.raises(Exception, match="content differs"):
        run("migrate_phase", "data", interactive=False, jobs=2, validate_only=True)
    failed = (
        MigrationRecord.objects.filter(migration_id="data/acme_0001/validate/contact_data_contacts")
        .latest_attempts()
        .get()
    )
    assert failed.status == Status.FAILED
    assert failed.details["differing_keys"] == [[3001]]


def test_a_ranged_copy_killed_resumes_exactly_once_with_another_jobs(larger_schemas_ready, settings):
    with psycopg_connect() as watcher:
        ours = [
            r[0]
            for r in watcher.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()").fetchall()
        ]
        tenant, table, killed_id = kill_when(
            ["migrate_phase", "data", "--batch-size", "100", "--jobs", "2", "--noinput"],
            lambda: ranged_copy_half_way(watcher),
            "a ranged copy half way",
            env=manage_env(SALESFLOW_RANGE_ROWS="1000"),
            interval=0.002,
        )
        wait_for_killed_sessions_to_end(watcher, ours)

    killed = MigrationRecord.objects.get(pk=killed_id)
    planned = {r.migration_id: r.details["range"] for r in range_rows("copy_range")}
    assert killed.status == Status.RUNNING
    assert 0 < killed.rows_copied < killed.rows_expected
    schema = f"tenant_{tenant}"
    # every range's checkpoint committed with its batch: the target holds exactly the rows they account for
    in_target = {
        r.migration_id: value(
            sql.SQL("SELECT count(*) FROM {} WHERE id > %s AND id <= %s").format(sql.Identifier(schema, table)),
            [
                -(2**63) if r.details["range"]["after"] is None else r.details["range"]["after"],
                2**63 - 1 if r.details["range"]["through"] is None else r.details["range"]["through"],
            ],
        )
        for r in range_rows("copy_range", tenant)
        if r.target == table
    }
    assert in_target == {r.migration_id: r.rows_copied for r in range_rows("copy_range", tenant) if r.target == table}
    assert count(schema, table) == sum(in_target.values())

    # `status` and the dashboard show the table's progress range by range
    shown = next(t for t in status_report().ranged if (t.tenant_id, t.table, t.kind) == (tenant, table, "copy_range"))
    by_range = {r.index: r for r in shown.ranges}
    for record in range_rows("copy_range", tenant):
        if record.target == table:
            part = by_range[record.details["range"]["index"]]
            assert (part.status, part.rows_done, part.rows_planned) == (
                record.status,
                record.rows_copied,
                record.rows_expected,
            )
    assert shown.rows_done == count(schema, table)
    printed = run("migrate_phase", "status")
    assert f"RANGES {tenant} {table} copy: {shown.ranges_done}/{len(shown.ranges)} ranges done" in printed
    assert f"running, {killed.rows_copied:,}/{killed.rows_expected:,} rows" in printed
    assert [t.as_dict() for t in build_dashboard().ranged] == [t.as_dict() for t in status_report().ranged]

    # Rerun on three connections and with another range size: the recorded plan is followed.
    settings.SALESFLOW = {**settings.SALESFLOW, "RANGE_ROWS": 3_000}
    run("migrate_phase", "data", interactive=False, jobs=3, batch_size=700)

    killed.refresh_from_db()
    assert killed.status == Status.FAILED
    assert killed.error_message.startswith("interrupted:")
    retry = MigrationRecord.objects.filter(migration_id=killed.migration_id).latest_attempts().get()
    assert (retry.attempt, retry.status) == (killed.attempt + 1, Status.COMPLETED)
    assert retry.details["resumed_after"] == killed.checkpoint  # resumed from its checkpoint, not restarted
    for migration_id, bounds in planned.items():
        assert MigrationRecord.objects.filter(migration_id=migration_id).latest_attempts().get().details["range"] == (
            bounds
        )
    assert_copied_exactly(TENANTS)
    assert status_report().ranged == []  # every range done: nothing in progress to show
    assert (
        not MigrationRecord.objects.filter(phase="data", step__in=["copy_table", "validate"])
        .latest_attempts()
        .exclude(status=Status.COMPLETED)
        .exists()
    )


def test_a_ranged_validation_killed_is_done_again_with_another_jobs(larger_schemas_ready, settings):
    settings.SALESFLOW = {**settings.SALESFLOW, "RANGE_ROWS": 200}
    run("migrate_phase", "data", interactive=False, jobs=2, batch_size=2000)
    expected = {
        r.migration_id: (r.source_fingerprint, r.target_fingerprint, r.rows_copied)
        for r in MigrationRecord.objects.filter(phase="data", step="validate").latest_attempts()
    }
    with psycopg_connect() as watcher:
        ours = [
            r[0]
            for r in watcher.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()").fetchall()
        ]
        kill_when(
            ["migrate_phase", "data", "--validate-only", "--jobs", "2", "--noinput"],
            lambda: watcher.execute(
                "SELECT 1 FROM public.schema_migrations WHERE step = 'validate_range' AND status = 'RUNNING' "
                "AND attempt > 1"
            ).fetchone(),
            "a ranged validation half way",
            env=manage_env(SALESFLOW_RANGE_ROWS="200"),
            interval=0.002,
        )
        wait_for_killed_sessions_to_end(watcher, ours)
    # killed half way: in a range, or between two (a range of 200 rows takes milliseconds)
    assert (
        MigrationRecord.objects.filter(step="validate_range")
        .latest_attempts()
        .filter(status__in=[Status.RUNNING, Status.PENDING])
        .exists()
    )

    run("migrate_phase", "data", interactive=False, jobs=3, validate_only=True)

    assert (
        not MigrationRecord.objects.filter(phase="data")
        .latest_attempts()
        .exclude(status__in=[Status.COMPLETED])
        .exclude(status=Status.FAILED, error_message__startswith="interrupted:")
        .exists()
    )
    after = {
        r.migration_id: (r.source_fingerprint, r.target_fingerprint, r.rows_copied)
        for r in MigrationRecord.objects.filter(phase="data", step="validate").latest_attempts()
    }
    assert after == expected
    assert all(source == target for source, target, _rows in after.values())
    assert_copied_exactly(TENANTS)
