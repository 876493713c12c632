"""The online migration killed with SIGKILL (a real child process) during the copy of `data --online`, during
`sync` and during the online cutover, while a writer keeps writing through the legacy names: the rerun finishes
with every write the writer committed in the new tables, and no tenant is ever half switched."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from psycopg import sql

from migrator.tables import LEGACY_TENANT_TABLES
from tests.helpers import run
from tests.migrator.helpers import (
    kill_when,
    manage_env,
    psycopg_connect,
    value,
    wait_for,
    wait_for_killed_sessions_to_end,
)
from tests.migrator.test_online_writer import (
    TENANT_TABLES,
    Writer,
    assert_committed_writes_in_new_tables,
    untouched_rows_differing,
)

TENANTS = ["tenant_acme_0001", "tenant_globex_0002"]
TENANT = TENANTS[0]  # the writer's
CONTACTS, ACTIVITIES = 4_000, 8_000


@pytest.fixture
def online_ready(larger_schemas_ready: dict[str, int]) -> None:
    """Two tenants big enough to be caught half way, phases 1 and 2 done."""
    assert (larger_schemas_ready["contacts"], larger_schemas_ready["activities"]) == (CONTACTS, ACTIVITIES)


@contextmanager
def writing() -> Iterator[Writer]:
    writer = Writer()
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(writer.latencies) > 5, what="the writer started")
        yield writer
    finally:
        writer.stop.set()
        thread.join(timeout=30)


def kill_phase_when(args: list[str], ready: Callable[[Any], object], what: str) -> None:
    """Run ``manage.py migrate_phase <args>`` in a child, SIGKILL it once ``ready(conn)`` holds, and wait
    until the server has ended its sessions (their open transactions rolled back, their locks gone)."""
    with psycopg_connect() as watcher:
        ours = [
            r[0]
            for r in watcher.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()").fetchall()
        ]
        kill_when(
            ["migrate_phase", *args, "--noinput"],
            lambda: ready(watcher),
            what,
            env=manage_env(),
            timeout=90,
            interval=0.002,
        )
        wait_for_killed_sessions_to_end(watcher, ours, keep_test_clients=True)


def switch_state(schema: str) -> str:
    """'switched' (views, no legacy table, no capture), 'captured' (legacy tables under capture, no views)."""
    views = value(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
        "AND c.relkind = 'v' AND obj_description(c.oid, 'pg_class') LIKE 'salesflow migrator%%'",
        [schema],
    )
    legacy = value(
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = ANY(%s)",
        [schema, list(LEGACY_TENANT_TABLES)],
    )
    triggers = value(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND t.tgname = 'migrator_capture'",
        [schema],
    )
    tables = len(LEGACY_TENANT_TABLES)
    if views == tables and legacy == 0 and triggers == 0:
        return "switched"
    if views == 0 and legacy == tables and triggers == tables:
        return "captured"
    return f"half: {views} views, {legacy} legacy tables, {triggers} capture triggers"


def finish(*, from_phase: str, until: str = "cutover") -> None:
    order = ["data", "sync", "security", "verify", "cutover"]
    for phase in order[order.index(from_phase) : order.index(until) + 1]:
        if phase == "data":
            run("migrate_phase", "data", "--online", "--batch-size", "500", interactive=False)
        else:
            run("migrate_phase", phase, interactive=False)


def assert_every_write_carried_over(writer: Writer) -> None:
    assert writer.errors == []
    assert writer.deadlocks == 0
    assert writer.phones
    assert writer.users
    for schema in TENANTS:
        assert switch_state(schema) == "switched", schema
    assert value("SELECT to_regnamespace('migrator_online')") is None
    assert_committed_writes_in_new_tables(writer)
    # rows the writer did not touch are identical to the legacy rows archived at cutover (the writer goes on
    # writing through the views after cutover: those writes are in the new tables only)
    touched = {"contacts": set(writer.phones), "activities": writer.touched_activities | writer.deleted_activities}
    for schema in TENANTS:
        for legacy, target in TENANT_TABLES:
            ids = touched[legacy] if schema == TENANT else set()
            assert untouched_rows_differing(schema, legacy, target, ids) == 0, f"{schema}.{target}"


def test_killed_during_the_online_copy_a_rerun_carries_every_write(online_ready):
    with writing() as writer:
        kill_phase_when(
            ["data", "--online", "--batch-size", "100"],
            lambda conn: conn.execute(
                "SELECT 1 FROM public.schema_migrations WHERE step = 'copy_table' AND status = 'RUNNING' "
                "AND rows_copied > 0 AND rows_copied < rows_expected"
            ).fetchone(),
            "a copy_table step half way",
        )
        assert value("SELECT count(*) FROM migrator_online.captured_tables") > 0  # capture survived the kill
        finish(from_phase="data")
    assert_every_write_carried_over(writer)


def test_killed_during_sync_a_rerun_carries_every_write(online_ready):
    with writing() as writer:
        run("migrate_phase", "data", "--online", "--batch-size", "500", interactive=False)
        with psycopg_connect() as conn:  # a backlog sync needs many batches for
            conn.execute(
                sql.SQL("UPDATE {} SET subject = subject || '.' WHERE id % 2 = 0").format(
                    sql.Identifier(TENANT, "activities")
                )
            )
            conn.execute("UPDATE tenant_globex_0002.contacts SET phone = coalesce(phone, '') || '.'")
        backlog = value("SELECT count(*) FROM migrator_online.changes")
        assert backlog > 5_000
        kill_phase_when(
            ["sync", "--batch-size", "50"],
            lambda conn: conn.execute(
                "SELECT 1 FROM public.schema_migrations WHERE phase = 'sync' AND status = 'RUNNING' "
                "AND (SELECT count(*) FROM migrator_online.changes) < %s",
                [backlog - 500],
            ).fetchone(),
            "sync half way through the backlog",
        )
        assert value("SELECT count(*) FROM migrator_online.changes") > 0  # killed with changes left
        finish(from_phase="sync")
    assert_every_write_carried_over(writer)


def test_killed_during_the_online_cutover_no_tenant_is_half_switched(online_ready):
    with writing() as writer:
        finish(from_phase="data", until="verify")
        # A reader's open transaction on globex keeps cutover's ACCESS EXCLUSIVE waiting inside globex's
        # switch transaction (some of its tables already locked): killed right there. The wait is retried
        # after each --lock-timeout (kept under deadlock_timeout, as cutover requires).
        with psycopg_connect() as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT 1 FROM tenant_globex_0002.contacts LIMIT 1")
            kill_phase_when(
                ["cutover", "--lock-timeout", "900"],
                lambda conn: conn.execute(
                    "SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE NOT l.granted AND l.mode = 'AccessExclusiveLock' "
                    "AND n.nspname = 'tenant_globex_0002'"
                ).fetchone(),
                "cutover waiting inside the switch of tenant_globex_0002",
            )
            reader.execute("ROLLBACK")
        states = {schema: switch_state(schema) for schema in TENANTS}
        assert states["tenant_globex_0002"] == "captured", states  # its transaction rolled back whole
        assert states[TENANT] in ("switched", "captured"), states
        run("migrate_phase", "cutover", interactive=False)
    assert_every_write_carried_over(writer)
