"""The online migration: `data --online` ends with the legacy and new tables in two-way sync; cutover declares
the new ones primary, rollback before finalize loses no write, finalize archives the legacy tables."""

from __future__ import annotations

import json
import signal

import pytest
from django.core.management import CommandError
from psycopg import sql

from migrator import db
from migrator.ops import capture, twoway
from migrator.tables import LEGACY_AUTH_TABLES, LEGACY_TENANT_TABLES
from tests.helpers import legacy_fingerprints, run
from tests.migrator.helpers import (
    content,
    one_line,
    plain_columns,
    psycopg_connect,
    start_manage,
    value,
    wait_for,
    wrongly_remapped,
)
from tests.migrator.online.support import migrate_online_until_cutover

TENANT = "tenant_acme_0001"
SCOPES = ["salesflow_auth", TENANT]


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


def new_side_writes(conn) -> int:
    """Writes of the new application version through the new tables: a contact (its id returned), an update."""
    new_id = conn.execute(
        on_tenant(
            "INSERT INTO {} (first_name, email, contact_type_id, created_at) "
            "SELECT 'New side', 'new-side@example.com', min(id), now() FROM contact.contact_types RETURNING id",
            "contact_data_contacts",
        )
    ).fetchone()[0]
    conn.execute(on_tenant("UPDATE {} SET phone = 'changed on the new side' WHERE id = 5", "contact_data_contacts"))
    conn.execute(
        "INSERT INTO auth.users (email, password_hash, created_at) VALUES ('new-side@example.com', 'x', now())"
    )
    return new_id


def sync_triggers(schema: str) -> int:
    return value(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND t.tgname LIKE 'salesflow_sync%%'",
        [schema],
    )


def test_data_online_ends_in_two_way_sync_and_writes_appear_on_both_sides_at_once(schemas_ready):
    run("migrate_phase", "data", "--online", interactive=False)
    assert twoway.synced_scopes() == sorted([*SCOPES, "tenant_empty_0001", "tenant_globex_0002"])
    assert capture.captured_tables(TENANT) == {}
    assert value("SELECT to_regnamespace('migrator_online')") is None  # the capture is gone
    for table in LEGACY_TENANT_TABLES:  # the legacy names are still the real tables
        assert value("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [f"{TENANT}.{table}"]) == "r"
    with psycopg_connect() as conn:
        legacy_writes(conn)
        new_id = new_side_writes(conn)
    # no sync needed: each write was made on the other side in its own transaction
    status = json.loads(run("migrate_phase", "status", format="json"))
    assert status["lag"] == []
    assert_in_sync()
    assert value("SELECT count(*) FROM contact.contact_types WHERE code = 'online_new'") == 1
    assert value(on_tenant("SELECT email FROM {} WHERE id = %s", "contacts"), [new_id]) == "new-side@example.com"
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 5", "contacts")) == "changed on the new side"
    assert value("SELECT count(*) FROM salesflow_auth.users WHERE email = 'new-side@example.com'") == 1


def test_sync_follow_ends_cleanly_on_sigterm_while_the_sides_stay_in_sync(schemas_ready):
    """Nothing is captured once `data --online` has ended (the sync is synchronous): `sync --follow` has
    nothing to apply, and still ends cleanly on SIGTERM."""
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
            new_side_writes(conn)
        assert_in_sync()  # at once, not by the follower
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert "stopped on request" in out
    assert "0 captured changes applied" in out
    assert_in_sync()


def archived(schema: str, table: str) -> bool:
    owner = schema.removeprefix("tenant_")
    return value("SELECT to_regclass(%s) IS NOT NULL", [f"salesflow_archive.{owner}__{table}"])


def test_online_cutover_keeps_the_legacy_tables_real_and_in_sync_until_finalize_archives_them(schemas_ready):
    migrate_online_until_cutover()
    with psycopg_connect() as conn:
        legacy_writes(conn)
    run("migrate_phase", "cutover", interactive=False)
    # cutover moved nothing: the legacy names are the same real tables, still in two-way sync
    for table in LEGACY_TENANT_TABLES:
        assert value("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [f"{TENANT}.{table}"]) == "r"
        assert not archived(TENANT, table)
    assert set(SCOPES) <= set(twoway.synced_scopes())
    assert twoway.triggers_missing(TENANT) == []
    assert_in_sync()
    with psycopg_connect() as conn:
        # the old application through the legacy names ...
        type_id = conn.execute(on_tenant("SELECT min(id) FROM {}", "contact_types")).fetchone()[0]
        legacy_id = conn.execute(
            on_tenant(
                "INSERT INTO {} (first_name, contact_type_id, created_at) VALUES ('After', %s, now()) RETURNING id",
                "contacts",
            ),
            [type_id],
        ).fetchone()[0]
        conn.execute(on_tenant("UPDATE {} SET phone = 'after cutover' WHERE id = 1", "contacts"))
        conn.execute(on_tenant("DELETE FROM {} WHERE id = 12", "activities"))
        conn.execute(on_tenant("INSERT INTO {} (code, name) VALUES ('after_cutover', 'After')", "contact_types"))
        conn.execute(
            "INSERT INTO salesflow_auth.users (email, password_hash, created_at) "
            "VALUES ('after@example.com', 'x', now())"
        )
        # ... and the new one through the new names, at the same time
        new_id = new_side_writes(conn)
    assert legacy_id != new_id  # one id space: legacy odd, new even
    assert legacy_id % 2 == 1
    assert new_id % 2 == 0
    assert_in_sync()
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 1", "contact_data_contacts")) == "after cutover"
    assert value(on_tenant("SELECT count(*) FROM {} WHERE id = 12", "activity_data_activities")) == 0
    assert value(
        on_tenant(
            "SELECT t.code FROM {} c JOIN contact.contact_types t ON t.id = c.contact_type_id WHERE c.id = %s",
            "contact_data_contacts",
        ),
        [legacy_id],
    ) == value(on_tenant("SELECT code FROM {} WHERE id = %s", "contact_types"), [type_id])
    assert value("SELECT count(*) FROM contact.contact_types WHERE code = 'after_cutover'") == 1
    assert value("SELECT count(*) FROM auth.users WHERE email = 'after@example.com'") == 1
    expected = content(TENANT, "contact_data_contacts", plain_columns("contacts"))

    run("migrate_phase", "finalize", observe_seconds=0.2, interactive=False)
    for table in LEGACY_TENANT_TABLES:
        assert value("SELECT to_regclass(%s)", [f"{TENANT}.{table}"]) is None
        assert archived(TENANT, table), table
    for table in LEGACY_AUTH_TABLES:
        assert archived("salesflow_auth", table), table
    assert sync_triggers(TENANT) == 0
    assert sync_triggers("salesflow_archive") == 0
    assert value("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'salesflow_sync%%'") == 0
    assert value("SELECT to_regnamespace('migrator_sync')") is None
    assert twoway.synced_scopes() == []
    # the archive holds the legacy tables as they were when finalize stopped the sync
    assert content("salesflow_archive", "acme_0001__contacts", plain_columns("contacts")) == expected
    assert content(TENANT, "contact_data_contacts", plain_columns("contacts")) == expected
    # the new tables issue ids in steps of 1 again, past every id either side issued
    with psycopg_connect() as conn:
        after = conn.execute(
            on_tenant(
                "INSERT INTO {} (first_name, created_at) VALUES ('After finalize', now()) RETURNING id",
                "contact_data_contacts",
            )
        ).fetchone()[0]
        assert (
            conn.execute(
                on_tenant(
                    "INSERT INTO {} (first_name, created_at) VALUES ('After finalize', now()) RETURNING id",
                    "contact_data_contacts",
                )
            ).fetchone()[0]
            == after + 1
        )
    assert after > max(legacy_id, new_id)


def legacy_triggers() -> int:
    """Triggers of the migrator (capture or two-way sync) on tables outside its own schemas."""
    return value(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE (t.tgname LIKE 'migrator%%' OR t.tgname LIKE 'salesflow_sync%%') "
        "AND n.nspname NOT IN ('migrator_online', 'migrator_sync')"
    )


def test_rollback_before_cutover_stops_the_sync_and_keeps_every_write_on_the_legacy_side(schemas_ready):
    run("migrate_phase", "data", "--online", interactive=False)
    with psycopg_connect() as conn:
        legacy_writes(conn)
        new_id = new_side_writes(conn)  # the new application's write too: the legacy side has it
    before = legacy_fingerprints([TENANT.removeprefix("tenant_")])
    assert legacy_triggers() > 0
    run("migrate_phase", "rollback", interactive=False)
    assert legacy_triggers() == 0
    assert value("SELECT to_regnamespace('migrator_online')") is None
    assert value("SELECT to_regnamespace('migrator_sync')") is None
    assert value("SELECT to_regclass(%s)", [f"{TENANT}.contact_data_contacts"]) is None
    assert legacy_fingerprints([TENANT.removeprefix("tenant_")]) == before
    assert value(on_tenant("SELECT email FROM {} WHERE id = %s", "contacts"), [new_id]) == "new-side@example.com"
    with psycopg_connect() as conn:  # the legacy sequence back to steps of 1, past every id issued
        next_id = conn.execute(
            on_tenant(
                "INSERT INTO {} (first_name, created_at) VALUES ('After rollback', now()) RETURNING id", "contacts"
            )
        ).fetchone()[0]
    assert next_id == new_id + 1


def test_rollback_after_online_cutover_keeps_every_write_made_on_either_side_since(schemas_ready):
    migrate_online_until_cutover()
    run("migrate_phase", "cutover", interactive=False)
    with psycopg_connect() as conn:
        # written since cutover: through the legacy names and through the new ones
        legacy_writes(conn)
        conn.execute(on_tenant("UPDATE {} SET phone = 'legacy side after cutover' WHERE id = 1", "contacts"))
        conn.execute(on_tenant("DELETE FROM {} WHERE id = 13", "activities"))
        new_id = new_side_writes(conn)
        conn.execute(
            on_tenant("UPDATE {} SET subject = 'new side after cutover' WHERE id = 20", "activity_data_activities")
        )
    expected = {
        legacy: content(TENANT, target, plain_columns(legacy))
        for legacy, target in (("contacts", "contact_data_contacts"), ("activities", "activity_data_activities"))
    }
    users = content("auth", "users", ["id", "email", "password_hash", "full_name", "is_active", "created_at"])
    run("migrate_phase", "rollback", interactive=False)
    assert legacy_triggers() == 0
    assert value("SELECT to_regnamespace('migrator_sync')") is None
    assert value("SELECT to_regclass(%s)", [f"{TENANT}.contact_data_contacts"]) is None
    assert value("SELECT count(*) FROM pg_views WHERE viewname = 'contacts'") == 0
    for legacy, want in expected.items():
        assert content(TENANT, legacy, plain_columns(legacy)) == want, legacy
    assert (
        content("salesflow_auth", "users", ["id", "email", "password_hash", "full_name", "is_active", "created_at"])
        == users
    )
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 1", "contacts")) == "legacy side after cutover"
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 5", "contacts")) == "changed on the new side"
    assert value(on_tenant("SELECT count(*) FROM {} WHERE id = 13", "activities")) == 0
    assert value(on_tenant("SELECT subject FROM {} WHERE id = 20", "activities")) == "new side after cutover"
    assert value(on_tenant("SELECT email FROM {} WHERE id = %s", "contacts"), [new_id]) == "new-side@example.com"
    assert value("SELECT count(*) FROM salesflow_auth.users WHERE email = 'new-side@example.com'") == 1
    assert value(on_tenant("SELECT count(*) FROM {} WHERE code = 'online_new'", "contact_types")) == 1


def test_an_online_run_that_failed_says_to_rerun_it_online_and_an_offline_rerun_is_refused(schemas_ready):
    """An offline copy of the tenants an online run had not reached would miss the writes made after it."""
    db.execute("ALTER TABLE tenant_acme_0001.contacts ADD COLUMN loyalty int")  # blocks acme's copy
    with pytest.raises(CommandError) as failed:
        run("migrate_phase", "data", "--online", interactive=False)
    assert "rerun `migrate_phase data --noinput --online` to resume" in str(failed.value)

    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "data", interactive=False)
    assert one_line(str(refused.value))
    assert "this migration runs online" in str(refused.value)
    assert "rerun `migrate_phase data --online`" in str(refused.value)


def test_two_way_sync_does_not_start_for_a_tenant_copied_offline(schemas_ready):
    run("migrate_phase", "data", "--tenant", "acme_0001", interactive=False)  # offline, no capture

    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "data", "--online", interactive=False)

    assert "tenant_acme_0001: contacts, activities copied offline, without change capture" in str(refused.value)
    assert not twoway.is_synced("tenant_acme_0001")
    assert twoway.is_synced("tenant_globex_0002")  # the others go on
