"""The short lock that starts a tenant's two-way sync (at the end of `data --online`) against an application
transaction that read one legacy table and then writes others: the application is never a deadlock's victim.

(Online cutover takes no lock any more: the lock that writers meet is this one.)"""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest
from django.core.management.base import CommandError
from psycopg import sql

from migrator.ops import twoway
from tests import warm_children
from tests.helpers import run
from tests.migrator.helpers import PROJECT_DIR, manage_command, manage_env, psycopg_connect, value, wait_for

TENANT = "tenant_acme_0001"


def on_tenant(query: str, *tables: str) -> sql.Composed:
    return sql.SQL(query).format(*(sql.Identifier(TENANT, table) for table in tables))


def sync_start_waits_for(conn: psycopg.Connection, table: str, app_pid: int) -> bool:
    """Another session awaits an ACCESS EXCLUSIVE lock on the tenant's ``table``: the sync's start, which
    requests every table of the tenant in one statement, in name order."""
    return bool(
        conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = to_regclass(%s) AND NOT granted "
            "AND mode = 'AccessExclusiveLock' AND pid <> %s)",
            [f"{TENANT}.{table}", app_pid],
        ).fetchone()[0]
    )


def test_an_application_transaction_meets_no_deadlock_when_the_two_way_sync_starts(schemas_ready):
    # a lock wait that could outlast a synced write's wait or the application's deadlock_timeout is refused
    with pytest.raises(CommandError, match="--lock-timeout 1000 ms is not below"):
        run("migrate_phase", "data", "--online", lock_timeout_ms=1000, interactive=False)
    with psycopg_connect() as watcher, psycopg_connect() as app:
        app.execute("SET deadlock_timeout = '1s'")  # the server's default, what an application has
        app_pid = app.execute("SELECT pg_backend_pid()").fetchone()[0]
        activity_type = app.execute(on_tenant("SELECT min(id) FROM {}", "activity_types")).fetchone()[0]
        app.autocommit = False
        # The application's transaction reads a legacy table (a contact type to use) ...
        type_id = app.execute(on_tenant("SELECT id FROM {} ORDER BY id LIMIT 1", "contact_types")).fetchone()[0]
        child = warm_children.popen(
            manage_command("migrate_phase", "data", "--online", "--noinput", "--lock-timeout", "400"),
            cwd=PROJECT_DIR,
            env=manage_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # The sync's start holds activities, activity_data_activities, activity_types and
            # contact_data_contacts, and waits for contact_types, which the application's read holds.
            wait_for(
                lambda: sync_start_waits_for(watcher, "contact_types", app_pid),
                timeout=120,
                interval=0.005,
                what="the start of the two-way sync to wait for contact_types",
            )
            # ... then writes a contact and an activity (a table the sync's start holds already):
            # a lock cycle, which the migrator's lock_timeout breaks before deadlock_timeout.
            deadlocked = False
            started = time.monotonic()
            try:
                contact_id = app.execute(
                    on_tenant(
                        "INSERT INTO {} (first_name, phone, contact_type_id, created_at) "
                        "VALUES ('App', 'during the sync start', %s, now()) RETURNING id",
                        "contacts",
                    ),
                    [type_id],
                ).fetchone()[0]
                activity_id = app.execute(
                    on_tenant(
                        "INSERT INTO {} (contact_id, activity_type_id, subject, created_at) "
                        "VALUES (%s, %s, 'during the sync start', now()) RETURNING id",
                        "activities",
                    ),
                    [contact_id, activity_type],
                ).fetchone()[0]
                app.commit()
            except psycopg.errors.DeadlockDetected:
                deadlocked = True
                app.rollback()
            waited = time.monotonic() - started
            out, _ = child.communicate(timeout=180)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert not deadlocked, f"the application's write was aborted as a deadlock after {waited:.2f} s"
    assert child.returncode == 0, out
    assert waited < 1.0
    assert twoway.is_synced(TENANT)
    # the first attempt gave up its locks (lock_timeout), which let the application's write through
    attempts = value(
        "SELECT (details ->> 'attempts')::int FROM public.schema_migrations WHERE phase = 'data' "
        "AND step = 'start_two_way_sync' AND target = %s AND status = 'COMPLETED'",
        [TENANT],
    )
    assert attempts >= 2
    # the write committed, and is on both sides
    for contacts, activities in (("contacts", "activities"), ("contact_data_contacts", "activity_data_activities")):
        assert value(on_tenant("SELECT phone FROM {} WHERE id = %s", contacts), [contact_id]) == "during the sync start"
        assert value(on_tenant("SELECT contact_id FROM {} WHERE id = %s", activities), [activity_id]) == contact_id
