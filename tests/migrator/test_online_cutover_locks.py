"""The online cutover's locks against an application transaction that read one legacy table and then writes another."""

from __future__ import annotations

import subprocess
import threading
import time

import psycopg
import pytest
from django.core.management.base import CommandError
from psycopg import sql

from tests.helpers import run
from tests.migrator.helpers import PROJECT_DIR, manage_command, manage_env, psycopg_connect, value, wait_for

TENANT = "tenant_acme_0001"
LEGACY_TABLES = ["contacts", "activities", "contact_types", "activity_types", "tag_categories"]
# Long enough that the cutover is still inside its transaction when the application's deadlock check
# runs (1 s after it started waiting), short enough for the cutover's lock_timeout below (800 ms).
HELD_SECONDS = 0.4


def cutover_lock_taken(conn: psycopg.Connection, writer_pid: int) -> bool:
    """Another session holds or awaits a lock on the tenant's legacy tables that blocks writes."""
    return bool(
        conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s) "
            "AND l.pid <> %s AND l.mode IN ('ShareRowExclusiveLock', 'AccessExclusiveLock'))",
            [TENANT, LEGACY_TABLES, writer_pid],
        ).fetchone()[0]
    )


def test_an_application_transaction_meets_no_deadlock_at_the_online_cutover(schemas_ready):
    run("migrate_phase", "data", "--online", interactive=False)
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    with pytest.raises(CommandError, match="deadlock_timeout"):  # a cutover that could make a writer its victim
        run("migrate_phase", "cutover", "--tenant", "acme_0001", lock_timeout_ms=1000, interactive=False)
    with psycopg_connect() as watcher, psycopg_connect() as holder, psycopg_connect() as app:
        app.execute("SET deadlock_timeout = '1s'")  # the server's default, what an application has
        writer_pid = app.execute("SELECT pg_backend_pid()").fetchone()[0]
        # The cutover waits, inside its switch, for the new contacts table's id sequence (it moves it past
        # the legacy ids) for as long as this session holds it: that stands for a tenant whose last
        # changes and comparisons take a while under the lock.
        holder.autocommit = False
        sequence = holder.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = pg_get_serial_sequence(%s, 'id')::regclass",
            [f"{TENANT}.contact_data_contacts"],
        ).fetchone()
        holder.execute(sql.SQL("ALTER SEQUENCE {} INCREMENT BY 1").format(sql.Identifier(*sequence)))
        app.autocommit = False
        # The application's transaction reads a legacy table (a contact type to use) ...
        type_id = app.execute(
            sql.SQL("SELECT id FROM {} ORDER BY id LIMIT 1").format(sql.Identifier(TENANT, "contact_types"))
        ).fetchone()[0]
        child = subprocess.Popen(
            manage_command("migrate_phase", "cutover", "--noinput", "--tenant", "acme_0001", "--lock-timeout", "800"),
            cwd=PROJECT_DIR,
            env=manage_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(lambda: cutover_lock_taken(watcher, writer_pid), timeout=60, interval=0.005, what="cutover locks")
            release = threading.Timer(HELD_SECONDS, holder.rollback)
            release.start()
            # ... then writes another while the cutover holds or waits for its locks.
            deadlocked = False
            started = time.monotonic()
            try:
                new_id = app.execute(
                    sql.SQL(
                        "INSERT INTO {} (first_name, phone, contact_type_id, created_at) "
                        "VALUES ('App', 'during cutover', %s, now()) RETURNING id"
                    ).format(sql.Identifier(TENANT, "contacts")),
                    [type_id],
                ).fetchone()[0]
                app.commit()
            except psycopg.errors.DeadlockDetected:
                deadlocked = True
                app.rollback()
            waited = time.monotonic() - started
            release.join()
            out, _ = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert not deadlocked, f"the application's write was aborted as a deadlock after {waited:.2f} s"
    assert child.returncode == 0, out
    assert waited < 1.0
    assert (
        value(
            sql.SQL("SELECT phone FROM {} WHERE id = %s").format(sql.Identifier(TENANT, "contact_data_contacts")),
            [new_id],
        )
        == "during cutover"
    )
