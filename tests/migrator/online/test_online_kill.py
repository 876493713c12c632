"""The online migration killed with SIGKILL (a real child process) during the copy of `data --online`, while
`data --online` starts a tenant's two-way sync and while `finalize` archives, with a writer writing through the
legacy names: the rerun finishes with every write the writer committed on both sides, and no scope is ever half
engaged (captured or synced, never some of each) or half archived."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from migrator.ops import twoway
from migrator.tables import LEGACY_AUTH_TABLES, LEGACY_TENANT_TABLES
from tests.helpers import run
from tests.migrator.helpers import (
    kill_when,
    kill_while_it_waits_for_a_lock,
    manage_env,
    psycopg_connect,
    value,
    wait_for_killed_sessions_to_end,
)
from tests.migrator.online.writer import (
    TENANT_TABLES,
    Writer,
    assert_committed_writes_in_new_tables,
    assert_sides_equal,
    untouched_rows_differing,
    writing,
)

TENANTS = ["tenant_acme_0001", "tenant_globex_0002"]
TENANT = TENANTS[0]  # the writer's
CONTACTS, ACTIVITIES = 4_000, 8_000


@pytest.fixture
def online_ready(larger_schemas_ready: dict[str, int]) -> None:
    """Two tenants big enough to be caught half way, phases 1 and 2 done."""
    assert (larger_schemas_ready["contacts"], larger_schemas_ready["activities"]) == (CONTACTS, ACTIVITIES)


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


def scope_state(schema: str) -> str:
    """'synced' (legacy tables real, each with its sync trigger, the scope recorded), 'captured' (legacy tables
    under change capture, no sync trigger), 'archived' (legacy tables gone, sync stopped), or 'half: ...'."""
    legacy = list(LEGACY_AUTH_TABLES) if schema == "salesflow_auth" else list(LEGACY_TENANT_TABLES)
    present, capture_triggers, sync_triggers = (
        value(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = ANY(%s)",
            [schema, legacy],
        ),
        *(
            value(
                "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s) AND t.tgname = %s",
                [schema, legacy, trigger],
            )
            for trigger in ("migrator_capture", twoway.ROW_TRIGGER)
        ),
    )
    engaged = twoway.is_synced(schema)
    tables = len(legacy)
    if present == tables and capture_triggers == 0 and sync_triggers == tables and engaged:
        return "synced"
    if present == tables and capture_triggers == tables and sync_triggers == 0 and not engaged:
        return "captured"
    if present == 0 and not engaged:
        return "archived"
    return f"half: {present} legacy tables, {capture_triggers} capture and {sync_triggers} sync triggers, {engaged=}"


def finish(*, from_phase: str, until: str = "cutover") -> None:
    order = ["data", "security", "verify", "cutover"]
    for phase in order[order.index(from_phase) : order.index(until) + 1]:
        if phase == "data":
            run("migrate_phase", "data", "--online", "--batch-size", "500", interactive=False)
        else:
            run("migrate_phase", phase, interactive=False)


def assert_every_write_carried_over(writer: Writer, state: str = "synced") -> None:
    assert writer.errors == []
    assert writer.deadlocks == 0
    assert writer.phones
    assert writer.users
    for schema in [*TENANTS, "salesflow_auth"]:
        assert scope_state(schema) == state, schema
    assert value("SELECT to_regnamespace('migrator_online')") is None
    assert_committed_writes_in_new_tables(writer)
    for schema in TENANTS:
        if state == "synced":  # the legacy side still real: both sides hold the same rows
            assert_sides_equal(schema)
        else:  # rows the writer did not touch are identical to the legacy rows archived by finalize
            touched = {
                "contacts": set(writer.phones),
                "activities": writer.touched_activities | writer.deleted_activities,
            }
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


def test_killed_while_the_two_way_sync_starts_no_scope_is_half_engaged(online_ready):
    with writing() as writer, psycopg_connect() as watcher, psycopg_connect() as reader:
        ours = [r[0] for r in watcher.execute("SELECT pid FROM pg_stat_activity").fetchall()]
        # A reader's open transaction on globex keeps the start of its two-way sync waiting for its ACCESS
        # EXCLUSIVE locks, inside its transaction (some of its tables already locked): killed right there.
        reader.execute("BEGIN")
        reader.execute("SELECT 1 FROM tenant_globex_0002.contacts LIMIT 1")
        kill_while_it_waits_for_a_lock(
            ["migrate_phase", "data", "--online", "--batch-size", "500", "--noinput"],
            watcher,
            "the two-way sync of tenant_globex_0002 waiting for its locks",
            ignore=ours,
            query_like='LOCK TABLE "tenant_globex_0002"',
        )
        wait_for_killed_sessions_to_end(watcher, ours, keep_test_clients=True)
        reader.execute("ROLLBACK")
        states = {schema: scope_state(schema) for schema in [*TENANTS, "salesflow_auth"]}
        assert states["tenant_globex_0002"] == "captured", states  # its transaction rolled back whole
        assert states[TENANT] in ("synced", "captured"), states
        assert states["salesflow_auth"] in ("synced", "captured"), states
        finish(from_phase="data")
    assert_every_write_carried_over(writer)


def test_killed_during_finalize_no_scope_is_half_archived(online_ready):
    with writing() as writer:
        finish(from_phase="data")
    # finalize ends the window once the application has stopped writing the legacy tables
    with psycopg_connect() as watcher, psycopg_connect() as reader:
        ours = [r[0] for r in watcher.execute("SELECT pid FROM pg_stat_activity").fetchall()]
        reader.execute("BEGIN")
        reader.execute("SELECT 1 FROM tenant_globex_0002.contacts LIMIT 1")
        kill_while_it_waits_for_a_lock(
            ["migrate_phase", "finalize", "--observe-seconds", "0.2", "--noinput"],
            watcher,
            "finalize of tenant_globex_0002 waiting for its locks",
            ignore=ours,
            query_like='LOCK TABLE "tenant_globex_0002"',
        )
        wait_for_killed_sessions_to_end(watcher, ours, keep_test_clients=True)
        reader.execute("ROLLBACK")
    states = {schema: scope_state(schema) for schema in [*TENANTS, "salesflow_auth"]}
    assert states["tenant_globex_0002"] == "synced", states  # its transaction rolled back whole
    assert states[TENANT] == "archived", states  # finalized before globex (name order)
    assert states["salesflow_auth"] == "synced", states  # the auth schema goes last
    run("migrate_phase", "finalize", observe_seconds=0.2, interactive=False)
    assert_every_write_carried_over(writer, state="archived")
    assert value("SELECT to_regnamespace('migrator_sync')") is None
