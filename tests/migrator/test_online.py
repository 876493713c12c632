"""The online migration: change capture during `data --online`, `sync`, lag in `status`."""

from __future__ import annotations

import json
import signal

import pytest
from django.core.management.base import CommandError
from psycopg import sql

from migrator.ops import capture
from migrator.tables import LEGACY_TENANT_TABLES
from tests.helpers import legacy_fingerprints, run
from tests.migrator.helpers import (
    content,
    plain_columns,
    psycopg_connect,
    start_manage,
    value,
    wait_for,
    wrongly_remapped,
)

TENANT = "tenant_acme_0001"


def on_tenant(query: str, *tables: str) -> sql.Composed:
    """``query`` with its ``{}`` placeholders filled by these tables of the writer's tenant schema."""
    return sql.SQL(query).format(*(sql.Identifier(TENANT, table) for table in tables))


def legacy_writes(conn) -> None:
    """Inserts, updates and deletes of contacts and activities, a new contact type and a new user."""
    conn.execute(on_tenant("INSERT INTO {} (code, name) VALUES ('online_new', 'Added online')", "contact_types"))
    conn.execute(
        on_tenant(
            "INSERT INTO {} (first_name, email, contact_type_id, created_at) "
            "SELECT 'Online', 'online@example.com', id, now() FROM {} WHERE code = 'online_new'",
            "contacts",
            "contact_types",
        )
    )
    conn.execute(on_tenant("UPDATE {} SET phone = 'changed online' WHERE id IN (1, 2, 3)", "contacts"))
    conn.execute(on_tenant("DELETE FROM {} WHERE contact_id = 4", "activities"))
    conn.execute(on_tenant("DELETE FROM {} WHERE id = 4", "contacts"))
    conn.execute(on_tenant("UPDATE {} SET subject = 'changed online' WHERE id IN (10, 11)", "activities"))
    conn.execute(
        "INSERT INTO salesflow_auth.users (email, password_hash, created_at) VALUES ('online@example.com', 'x', now())"
    )


def assert_in_sync(schema: str = TENANT) -> None:
    for legacy, target in (("contacts", "contact_data_contacts"), ("activities", "activity_data_activities")):
        cols = plain_columns(legacy)
        assert content(schema, legacy, cols) == content(schema, target, cols), legacy
        assert wrongly_remapped(schema, legacy) == 0
    cols = ["id", "email", "password_hash", "full_name", "is_active", "created_at"]
    assert content("salesflow_auth", "users", cols) == content("auth", "users", cols)


def test_data_online_captures_writes_and_sync_applies_them(schemas_ready):
    run("migrate_phase", "data", "--online", interactive=False)
    assert capture.captured_tables(TENANT) == dict.fromkeys(LEGACY_TENANT_TABLES, True)
    with psycopg_connect() as conn:
        legacy_writes(conn)
    status = json.loads(run("migrate_phase", "status", format="json"))
    lag = {x["scope"]: x for x in status["lag"]}
    assert lag[TENANT]["pending"] > 0
    assert lag["salesflow_auth"]["pending"] == 1
    run("migrate_phase", "sync", interactive=False)
    assert_in_sync()
    assert value("SELECT count(*) FROM migrator_online.changes") == 0
    assert value("SELECT count(*) FROM contact.contact_types WHERE code = 'online_new'") == 1


def test_sync_follow_applies_until_sigterm_and_ends_cleanly(schemas_ready):
    run("migrate_phase", "data", "--online", interactive=False)
    child = start_manage("migrate_phase", "sync", "--follow", "--noinput")
    try:
        with psycopg_connect() as conn:
            wait_for(
                lambda: conn.execute(
                    "SELECT count(*) FROM public.schema_migrations WHERE step = 'follow' AND status = 'RUNNING'"
                ).fetchone()[0],
                what="sync --follow running",
            )
            legacy_writes(conn)
            wait_for(
                lambda: conn.execute("SELECT count(*) = 0 FROM migrator_online.changes").fetchone()[0],
                what="the writes applied",
            )
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert "stopped on request" in out
    assert_in_sync()


def migrate_online_until_cutover() -> None:
    run("migrate_phase", "data", "--online", interactive=False)
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)


def test_online_cutover_leaves_writable_compatibility_views_and_no_capture(schemas_ready):
    migrate_online_until_cutover()
    with psycopg_connect() as conn:
        legacy_writes(conn)  # captured, not yet applied: cutover applies them
        legacy_contacts = conn.execute(on_tenant("SELECT * FROM {} ORDER BY id", "contacts")).fetchall()
        legacy_types = conn.execute(on_tenant("SELECT * FROM {} ORDER BY id", "contact_types")).fetchall()
    run("migrate_phase", "cutover", interactive=False)
    assert value("SELECT to_regnamespace('migrator_online')") is None
    assert (
        value(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'salesflow_archive' AND t.tgname LIKE 'migrator%%'"
        )
        == 0
    )
    with psycopg_connect() as conn:
        # reads through the legacy names: the same rows, reference ids the tenant's old ones
        assert conn.execute(on_tenant("SELECT * FROM {} ORDER BY id", "contacts")).fetchall() == legacy_contacts
        assert conn.execute(on_tenant("SELECT * FROM {} ORDER BY id", "contact_types")).fetchall() == legacy_types
        # writes through the legacy names land in the new tables, new ids from their sequences
        type_id = legacy_types[0][0]
        new_id = conn.execute(
            on_tenant(
                "INSERT INTO {} (first_name, contact_type_id, created_at) VALUES ('After', %s, now()) RETURNING id",
                "contacts",
            ),
            [type_id],
        ).fetchone()[0]
        assert new_id > max(r[0] for r in legacy_contacts)
        conn.execute(on_tenant("UPDATE {} SET phone = 'after cutover' WHERE id = 1", "contacts"))
        conn.execute(on_tenant("DELETE FROM {} WHERE id = 12", "activities"))
        conn.execute(on_tenant("INSERT INTO {} (code, name) VALUES ('after_cutover', 'After')", "contact_types"))
        conn.execute(
            "INSERT INTO salesflow_auth.users (email, password_hash, created_at) "
            "VALUES ('after@example.com', 'x', now())"
        )
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 1", "contact_data_contacts")) == "after cutover"
    assert value(on_tenant("SELECT count(*) FROM {} WHERE id = 12", "activity_data_activities")) == 0
    assert value(
        on_tenant(
            "SELECT t.code FROM {} c JOIN contact.contact_types t ON t.id = c.contact_type_id WHERE c.id = %s",
            "contact_data_contacts",
        ),
        [new_id],
    ) == value(on_tenant("SELECT code FROM {} WHERE id = %s", "contact_types"), [type_id])
    assert value("SELECT count(*) FROM contact.contact_types WHERE code = 'after_cutover'") == 1
    assert value("SELECT count(*) FROM auth.users WHERE email = 'after@example.com'") == 1


def legacy_triggers() -> int:
    return value(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE t.tgname LIKE 'migrator%%' AND n.nspname <> 'migrator_online'"
    )


def test_rollback_before_cutover_removes_capture_and_leaves_legacy_untouched(schemas_ready):
    run("migrate_phase", "data", "--online", interactive=False)
    with psycopg_connect() as conn:
        legacy_writes(conn)
    before = legacy_fingerprints([TENANT.removeprefix("tenant_")])
    assert legacy_triggers() > 0
    run("migrate_phase", "rollback", interactive=False)
    assert legacy_triggers() == 0
    assert value("SELECT to_regnamespace('migrator_online')") is None
    assert legacy_fingerprints([TENANT.removeprefix("tenant_")]) == before


def test_rollback_after_online_cutover_moves_legacy_back_unless_written_since(schemas_ready):
    migrate_online_until_cutover()
    with psycopg_connect() as conn:
        legacy_writes(conn)
    before = legacy_fingerprints([TENANT.removeprefix("tenant_")])
    phone = value(on_tenant("SELECT phone FROM {} WHERE id = 1", "contacts"))
    run("migrate_phase", "cutover", interactive=False)
    with psycopg_connect() as conn:
        conn.execute(on_tenant("UPDATE {} SET phone = 'written after cutover' WHERE id = 1", "contacts"))
    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "rollback", interactive=False)
    assert "written to since its online cutover" in str(refused.value)
    assert "--restore" in str(refused.value)
    assert "contact_data_contacts (" in str(refused.value)
    with psycopg_connect() as conn:  # undo the write: now nothing was written since cutover
        conn.execute(on_tenant("UPDATE {} SET phone = %s WHERE id = 1", "contacts"), [phone])
    run("migrate_phase", "rollback", interactive=False)
    assert legacy_fingerprints([TENANT.removeprefix("tenant_")]) == before
    assert legacy_triggers() == 0
    assert value("SELECT count(*) FROM pg_views WHERE viewname = 'contacts'") == 0
