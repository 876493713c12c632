"""Phase 1's pg_dump stays within the server's lock table: at a thousand tenants a parallel dump (the
leader's lock on every table plus each worker's) ran out of shared memory on a default server, and at
ten thousand a single dump cannot lock every table at all. Past what fits, the dump is taken in parts
that each lock their own tables and read one exported snapshot; a restore replays them in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from migrator.config import get_config
from migrator.core.errors import MigrationError
from migrator.ops import backup, dump_parts
from migrator.ops.dump_parts import DUMP_LOCK_SHARE, LockBudget, lock_budget, plan_dump
from migrator.phases.prepare import PreparePhase
from migrator.tables import LEGACY_TENANT_TABLES
from tests.helpers import legacy_fingerprints, run
from tests.migrator.helpers import (
    manage_env,
    one_line,
    psycopg_connect,
    start_manage,
    value,
    wait_for,
)

DEFAULT_SERVER = {"locks_per_transaction": 64, "connections": 100}  # 6,400 slots
TENANT_TABLES = 5  # legacy tables of a tenant schema


def tenants(count: int) -> list[tuple[str, int]]:
    return [(f"tenant_t{n:05d}", TENANT_TABLES) for n in range(count)]


def test_a_parallel_dump_that_would_overflow_the_lock_table_runs_with_one_job() -> None:
    assert plan_dump(2, LockBudget(tables=300, **DEFAULT_SERVER), tenants(58)).jobs == 2
    # 1,000 legacy tenants: 5,000 tables; leader and workers would need 10,000 locks
    one_dump = plan_dump(2, LockBudget(tables=5_000, **DEFAULT_SERVER), tenants(998))
    assert (one_dump.jobs, one_dump.parts) == (1, 1)
    assert plan_dump(1, LockBudget(tables=5_000, **DEFAULT_SERVER), tenants(998)).jobs == 1


def test_locks_other_sessions_hold_leave_the_dump_less_room() -> None:
    # 300 tenants fit a default server's lock table, unless another database holds most of it already
    assert plan_dump(2, LockBudget(tables=1_510, **DEFAULT_SERVER), tenants(300)).parts == 1
    crowded = LockBudget(tables=1_510, held=4_500, **DEFAULT_SERVER)
    plan = plan_dump(2, crowded, tenants(300))

    assert plan.parts > 1
    assert all(len(part) * TENANT_TABLES <= crowded.allowed for part in plan.tenant_parts)


def test_ten_thousand_tenants_are_dumped_in_parts_that_each_fit_the_lock_table() -> None:
    schemas = tenants(10_000)
    budget = LockBudget(tables=50_010, **DEFAULT_SERVER)
    plan = plan_dump(2, budget, schemas)

    assert plan.parts == 1 + len(plan.tenant_parts) > 1
    assert [s for part in plan.tenant_parts for s in part] == [s for s, _n in schemas]  # each once, in order
    assert all(len(part) * TENANT_TABLES <= budget.allowed for part in plan.tenant_parts)
    assert len(plan.tenant_parts) == -(-50_000 // (budget.allowed // TENANT_TABLES * TENANT_TABLES))  # as few as fit
    assert plan.jobs == 1


def test_tables_outside_the_tenant_schemas_that_cannot_be_locked_at_once_are_refused_with_the_setting() -> None:
    with pytest.raises(MigrationError) as exc:
        plan_dump(2, LockBudget(tables=60_000, **DEFAULT_SERVER), tenants(100))  # 59,500 tables elsewhere
    message = str(exc.value)
    assert one_line(message)
    assert "outside the tenant schemas" in message
    needed = int(message.split("max_locks_per_transaction to at least ")[1].split()[0])
    assert needed * DEFAULT_SERVER["connections"] * DUMP_LOCK_SHARE >= 59_500
    assert "restart PostgreSQL" in message


def test_a_schema_pattern_matches_only_its_own_name() -> None:
    assert dump_parts.schema_pattern("tenant_a") == '"tenant_a"'
    assert dump_parts.schema_pattern('tenant_"x*') == '"tenant_""x*"'


def test_the_budget_counts_the_tables_pg_dump_locks_and_the_servers_slots(seeded: dict[str, Any]) -> None:
    budget = lock_budget()
    assert budget.tables == value(
        "SELECT count(*) FROM pg_class WHERE relkind IN ('r', 'p', 'm', 'f') "
        "AND relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)"
    )
    assert budget.tables >= len(LEGACY_TENANT_TABLES) * len(seeded["tenants"])
    assert budget.slots == value(
        "SELECT current_setting('max_locks_per_transaction')::int * (current_setting('max_connections')::int "
        "+ current_setting('max_prepared_transactions')::int)"
    )
    assert plan_dump(2, budget, dump_parts.tenant_schema_tables()).jobs == 2  # a small database: one parallel dump
    assert dump_parts.tenant_schema_tables() == [
        (f"tenant_{t}", len(LEGACY_TENANT_TABLES)) for t in sorted(seeded["tenants"])
    ]


def test_a_backup_in_parts_restores_the_legacy_data_exactly(seeded: dict[str, Any], settings: Any) -> None:
    part_tables = len(LEGACY_TENANT_TABLES) + 1  # room for one tenant a part
    settings.SALESFLOW = {**settings.SALESFLOW, "BACKUP_PART_TABLES": part_tables}
    before = legacy_fingerprints(seeded["tenants"])

    out = run("migrate_phase", "prepare", interactive=False)

    info = backup.latest_backup(PreparePhase.BACKUP)
    assert info is not None
    assert info.parts == 4  # everything but the tenants, then one part per tenant
    parts = backup.backup_parts(Path(info.path))
    assert [p.name for p in parts] == ["part-0000", "part-0001", "part-0002", "part-0003"]
    assert "4 parts" in out
    rehearsal = json.loads(run("migrate_phase", "rehearse", interactive=False, format="json"))
    assert rehearsal["ok"], rehearsal  # its scratch copy is restored from the parts too
    assert rehearsal["rehearsed_volume"] == rehearsal["live_volume"]
    run("migrate_phase", "schemas", interactive=False)
    run("migrate_phase", "rollback", interactive=False, restore=True)
    assert legacy_fingerprints(seeded["tenants"]) == before


def test_the_parts_of_a_backup_read_one_snapshot(seeded: dict[str, Any]) -> None:
    """A row committed after the first part began but before a tenant's part is dumped is not in the
    backup: every part sees the database as it was when the backup started."""
    auth_users = sql.Identifier(get_config().legacy_auth_schema, "users")
    late_schema = "tenant_globex_0002"
    contacts_before = value(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(late_schema, "contacts")))
    env = manage_env(SALESFLOW_BACKUP_PART_TABLES="6", SALESFLOW_BACKUP_DIR=str(get_config().backup_dir))
    with psycopg_connect() as blocker, psycopg_connect() as writer, psycopg_connect() as watcher:
        blocker.execute("BEGIN")
        blocker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(auth_users))  # the first part waits
        child = start_manage("migrate_phase", "prepare", "--noinput", env=env)
        try:

            def first_part_waits() -> bool:
                if child.poll() is not None:
                    raise AssertionError(f"prepare ended before its dump waited: {child.stderr.read()!r}")
                return bool(
                    watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = %s AND wait_event_type = 'Lock'",
                        [backup.CLIENT_APP_NAME],
                    ).fetchone()[0]
                )

            wait_for(first_part_waits, timeout=60, what="the first part's pg_dump to wait for the locked table")
            writer.execute(
                sql.SQL(
                    "INSERT INTO {} (first_name, email, created_at) VALUES ('Late', 'late@example.com', now())"
                ).format(sql.Identifier(late_schema, "contacts"))
            )
            writer.commit()
            blocker.execute("ROLLBACK")
            _out, err = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 0, err
    info = backup.latest_backup(PreparePhase.BACKUP)
    assert info is not None
    assert info.parts == 4

    # the late row is in the database but not in the backup
    run("migrate_phase", "schemas", interactive=False)
    run("migrate_phase", "rollback", interactive=False, restore=True)
    restored = value(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(late_schema, "contacts")))
    assert restored == contacts_before
