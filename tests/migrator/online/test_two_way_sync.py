"""Two-way sync from ``data --online`` until ``finalize``: both sides are real tables, each write on
either side is on the other in the same transaction, with the semantics of real tables."""

from __future__ import annotations

import threading

import pytest
from psycopg import errors, sql

from migrator.config import get_config
from migrator.ops import twoway
from tests.helpers import run
from tests.migrator.helpers import psycopg_connect, rows, table_names, value
from tests.migrator.online.support import (
    ACTIVITIES,
    AUTH,
    CONTACTS,
    TENANT,
    assert_in_sync,
    cut_over_online,
    on,
    on_tenant,
    retried,
)


def test_data_online_ends_with_every_scope_in_two_way_sync_and_no_capture(synced):
    assert set(twoway.synced_scopes()) == {AUTH, TENANT, "tenant_globex_0002", "tenant_empty_0001"}
    assert value("SELECT to_regnamespace('migrator_online')") is None  # the capture queue is gone
    assert_in_sync()


def test_writes_on_either_side_are_on_the_other(synced):
    with psycopg_connect() as conn:
        # the old application, through the legacy names
        conn.execute(on_tenant("INSERT INTO {} (code, name) VALUES ('window', 'Added in the window')", "contact_types"))
        old_id = conn.execute(
            on_tenant(
                "INSERT INTO {} (first_name, contact_type_id, created_at) SELECT 'Old', id, now() FROM {} "
                "WHERE code = 'window' RETURNING id",
                "contacts",
                "contact_types",
            )
        ).fetchone()[0]
        conn.execute(on_tenant("UPDATE {} SET phone = 'old app' WHERE id IN (1, 2)", "contacts"))
        conn.execute(on_tenant("DELETE FROM {} WHERE id = 5", "activities"))
        conn.execute(
            "INSERT INTO salesflow_auth.users (email, password_hash, created_at) VALUES ('old@example.com', 'x', now())"
        )
        # the new application, through the new names (shared reference ids)
        new_id = conn.execute(
            on_tenant(
                "INSERT INTO {} (first_name, contact_type_id, created_at) "
                "SELECT 'New', id, now() FROM contact.contact_types WHERE code = 'window' RETURNING id",
                CONTACTS,
            )
        ).fetchone()[0]
        conn.execute(on_tenant("UPDATE {} SET phone = 'new app' WHERE id = 3", CONTACTS))
        conn.execute(on_tenant("DELETE FROM {} WHERE id = 6", ACTIVITIES))
        conn.execute("UPDATE auth.users SET full_name = 'Renamed by the new app' WHERE id = 1")
    assert_in_sync()
    assert old_id % 2 == 1  # one id space: legacy odd,
    assert new_id % 2 == 0  # new even
    assert value(on_tenant("SELECT first_name FROM {} WHERE id = %s", "contacts"), [new_id]) == "New"
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 3", "contacts")) == "new app"
    assert value("SELECT full_name FROM salesflow_auth.users WHERE id = 1") == "Renamed by the new app"
    assert value("SELECT count(*) FROM contact.contact_types WHERE code = 'window'") == 1


def increment(conn, schema: str, table: str) -> None:
    conn.execute(on(schema, "UPDATE {} SET owner_id = coalesce(owner_id, 0) + 1 WHERE id = 1", table))


def test_concurrent_read_modify_write_through_both_sides_loses_no_update(synced):
    start = value(on_tenant("SELECT coalesce(owner_id, 0) FROM {} WHERE id = 1", "contacts"))
    per_session = 40
    sides = ["contacts", "contacts", CONTACTS, CONTACTS]  # two sessions per side, at once
    failures: list[BaseException] = []

    def session(table: str) -> None:
        try:
            with psycopg_connect() as conn:
                conn.autocommit = True
                for _ in range(per_session):
                    # Four writers on one row from both sides meet at many hand-overs between the sides,
                    # each meeting a retry for one of them (docs/online.md, Limits).
                    retried(conn, lambda c: increment(c, TENANT, table), attempts=200)
        except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=session, args=(side,)) for side in sides]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    expected = start + per_session * len(sides)
    assert value(on_tenant("SELECT owner_id FROM {} WHERE id = 1", "contacts")) == expected
    assert value(on_tenant("SELECT owner_id FROM {} WHERE id = 1", CONTACTS)) == expected


def cross_on_one_row(table: str, new_table: str, row: int, legacy_write: str, new_write: str) -> None:
    """The legacy side's row is held by one writer (``FOR UPDATE``) while another writes the row on the new
    side and waits for it in the sync; then the first writes the row too, and would wait for the second.
    It must be told at once (40P01), not after the sync's 500 ms lock timeout, and the second goes on."""
    with psycopg_connect() as legacy_writer, psycopg_connect() as new_writer:
        legacy_writer.autocommit = new_writer.autocommit = False
        legacy_writer.execute(on_tenant("SELECT 1 FROM {} WHERE id = %s FOR UPDATE", table), [row])
        new_writer.execute("SET lock_timeout = '20s'")  # its own timeout, which the sync keeps
        new_pid = new_writer.info.backend_pid
        failures: list[BaseException] = []

        def write_new_side() -> None:
            try:
                new_writer.execute(on_tenant(new_write, new_table), [row])
                new_writer.commit()
            except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
                failures.append(exc)

        worker = threading.Thread(target=write_new_side)
        worker.start()
        blocked = "SELECT %s = ANY (pg_blocking_pids(%s))"
        for _ in range(2000):  # until the new side's writer waits in the sync for the legacy row
            if legacy_writer.execute(blocked, [legacy_writer.info.backend_pid, new_pid]).fetchone()[0]:
                break
            threading.Event().wait(0.01)
        else:
            pytest.fail("the new side's writer never waited for the legacy row")
        with pytest.raises(errors.DeadlockDetected, match="waits for this transaction"):
            legacy_writer.execute(on_tenant(legacy_write, table), [row])
        legacy_writer.rollback()
        worker.join(20)
    assert not failures, failures


def test_writers_that_cross_on_one_row_from_both_sides_end_at_once_as_a_deadlock(synced):
    legacy_write = "UPDATE {} SET phone = 'legacy side' WHERE id = %s"
    cross_on_one_row("contacts", CONTACTS, 1, legacy_write, "UPDATE {} SET phone = 'new side' WHERE id = %s")
    for table in ("contacts", CONTACTS):
        assert value(on_tenant("SELECT phone FROM {} WHERE id = 1", table)) == "new side"


def test_deletes_that_cross_on_one_row_from_both_sides_end_at_once_as_a_deadlock(synced):
    row = value(on_tenant("SELECT min(id) FROM {}", "activities"))
    cross_on_one_row("activities", ACTIVITIES, row, "DELETE FROM {} WHERE id = %s", "DELETE FROM {} WHERE id = %s")
    for table in ("activities", ACTIVITIES):
        assert value(on_tenant("SELECT count(*) FROM {} WHERE id = %s", table), [row]) == 0
    assert_in_sync()


def test_updates_of_different_columns_of_one_row_both_stay(synced):
    with psycopg_connect() as first, psycopg_connect() as second:
        first.autocommit = second.autocommit = False
        first.execute(on_tenant("UPDATE {} SET phone = 'first' WHERE id = 2", "contacts"))  # open transaction
        done = threading.Event()

        def other_column() -> None:
            second.execute(on_tenant("UPDATE {} SET company = 'second' WHERE id = 2", CONTACTS))
            second.commit()
            done.set()

        worker = threading.Thread(target=other_column)
        worker.start()
        assert not done.wait(0.5)  # waits for the first one's row lock, on the other side
        first.commit()
        worker.join(10)
    for table in ("contacts", CONTACTS):
        assert value(on_tenant("SELECT phone || '/' || company FROM {} WHERE id = 2", table)) == "first/second"


def test_a_repeatable_read_transaction_older_than_the_sync_reads_and_updates_real_rows(schemas_ready):
    rows = 120
    with psycopg_connect() as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM public.tenants").fetchone()  # its snapshot is taken here
        run("migrate_phase", "data", "--online", interactive=False)
        assert twoway.is_synced(TENANT)
        assert reader.execute(on_tenant("SELECT count(*) FROM {}", "contacts")).fetchone()[0] == rows
        assert reader.execute(on_tenant("UPDATE {} SET phone = 'rr' WHERE id = 7", "contacts")).rowcount == 1
        reader.commit()
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 7", CONTACTS)) == "rr"
    assert_in_sync()


def test_a_delete_the_legacy_foreign_key_refuses_is_still_refused(synced):
    parent = value(on_tenant("SELECT min(contact_id) FROM {}", "activities"))
    children = value(on_tenant("SELECT count(*) FROM {} WHERE contact_id = %s", "activities"), [parent])
    with psycopg_connect() as conn, pytest.raises(errors.ForeignKeyViolation):
        conn.execute(on_tenant("DELETE FROM {} WHERE id = %s", "contacts"), [parent])
    with psycopg_connect() as conn, pytest.raises(errors.ForeignKeyViolation):
        conn.execute("DELETE FROM salesflow_auth.users WHERE id = (SELECT min(user_id) FROM salesflow_auth.user_roles)")
    for table in (ACTIVITIES, "activities"):
        assert value(on_tenant("SELECT count(*) FROM {} WHERE contact_id = %s", table), [parent]) == children
    assert_in_sync()


@pytest.mark.parametrize("side", ["salesflow_auth", "auth"])
def test_a_new_id_given_to_a_row_with_another_unique_column_reaches_the_other_side(synced, side):
    """The old key's row goes first on the other side: written under its new key first, its email (unique)
    was taken by itself."""
    users, roles = sql.Identifier(side, "users"), sql.Identifier(side, "user_roles")
    ((user, email),) = rows(sql.SQL("SELECT id, email FROM {} ORDER BY id DESC LIMIT 1").format(users))
    with psycopg_connect() as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE user_id = %s").format(roles), [user])
        conn.execute(sql.SQL("UPDATE {} SET id = 9002 WHERE id = %s").format(users), [user])
    for schema in ("salesflow_auth", "auth"):
        found = value(
            sql.SQL("SELECT array_agg(id) FROM {} WHERE email = %s").format(sql.Identifier(schema, "users")), [email]
        )
        assert found == [9002], schema
    assert_in_sync()


def test_a_delete_the_new_side_cascades_removes_the_rows_on_both_sides(synced):
    parent = value(on_tenant("SELECT min(contact_id) FROM {}", ACTIVITIES))
    with psycopg_connect() as conn:
        conn.execute(on_tenant("DELETE FROM {} WHERE id = %s", CONTACTS), [parent])
    for table in ("contacts", CONTACTS):
        assert value(on_tenant("SELECT count(*) FROM {} WHERE id = %s", table), [parent]) == 0
    assert value(on_tenant("SELECT count(*) FROM {} WHERE contact_id = %s", "activities"), [parent]) == 0
    assert_in_sync()


def test_statements_the_old_application_used_keep_working(synced):
    with psycopg_connect() as conn:
        with conn.transaction():
            locked = conn.execute(
                on_tenant(
                    "SELECT c.id FROM {} c LEFT JOIN {} t ON t.id = c.contact_type_id WHERE c.id = 3 FOR UPDATE OF c",
                    "contacts",
                    "contact_types",
                )
            ).fetchall()
            assert locked == [(3,)]
        conn.execute(
            on_tenant(
                "INSERT INTO {} (id, first_name, created_at) VALUES (3, 'Upserted', now()) "
                "ON CONFLICT (id) DO UPDATE SET first_name = EXCLUDED.first_name",
                "contacts",
            )
        )
        with conn.cursor().copy("COPY salesflow_auth.users (email, password_hash, created_at) FROM STDIN") as copy:
            copy.write_row(("copied@example.com", "x", "2024-01-01 00:00:00+00"))
        sequence = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", [f"{TENANT}.contacts"]).fetchone()[0]
        assert sequence is not None
        drawn = conn.execute("SELECT nextval(%s)", [sequence]).fetchone()[0]
        inserted = conn.execute(
            on_tenant("INSERT INTO {} (first_name, created_at) VALUES ('Seq', now()) RETURNING id", "contacts")
        ).fetchone()[0]
        assert (
            conn.execute("SELECT currval(pg_get_serial_sequence(%s, 'id'))", [f"{TENANT}.contacts"]).fetchone()[0]
            == inserted
        )
        assert inserted > drawn
    assert value(on_tenant("SELECT first_name FROM {} WHERE id = 3", CONTACTS)) == "Upserted"
    assert value("SELECT count(*) FROM auth.users WHERE email = 'copied@example.com'") == 1
    assert_in_sync()


def test_the_old_applications_role_keeps_its_access(synced):
    role = f"{get_config().role_prefix}_old_app"
    ident = sql.Identifier(role)
    with psycopg_connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
        try:
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(TENANT), ident))
            conn.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
                    sql.Identifier(TENANT, "contacts"), ident
                )
            )
            cut_over_online()
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(ident))
                assert conn.execute(on_tenant("SELECT count(*) FROM {}", "contacts")).fetchone()[0] == 120
                conn.execute(on_tenant("UPDATE {} SET phone = 'as the old role' WHERE id = 9", "contacts"))
                conn.execute(on_tenant("INSERT INTO {} (first_name, created_at) VALUES ('Role', now())", "contacts"))
            assert value(on_tenant("SELECT phone FROM {} WHERE id = 9", CONTACTS)) == "as the old role"
            assert value(on_tenant("SELECT count(*) FROM {} WHERE first_name = 'Role'", CONTACTS)) == 1
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))
    assert_in_sync()


def test_no_id_is_issued_twice_by_either_side(schemas_ready):
    with psycopg_connect() as conn:  # before the migration: an id issued and deleted, one drawn and unused
        gone = conn.execute(
            on_tenant("INSERT INTO {} (first_name, created_at) VALUES ('Gone', now()) RETURNING id", "contacts")
        ).fetchone()[0]
        conn.execute(on_tenant("DELETE FROM {} WHERE id = %s", "contacts"), [gone])
        sequence = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", [f"{TENANT}.contacts"]).fetchone()[0]
        drawn = conn.execute("SELECT nextval(%s)", [sequence]).fetchone()[0]
    run("migrate_phase", "data", "--online", interactive=False)
    issued = []
    with psycopg_connect() as conn:
        for i in range(10):
            table = "contacts" if i % 2 else CONTACTS
            issued.append(
                conn.execute(
                    on_tenant("INSERT INTO {} (first_name, created_at) VALUES ('Id', now()) RETURNING id", table)
                ).fetchone()[0]
            )
    assert len(set(issued)) == len(issued)
    assert min(issued) > max(gone, drawn)
    assert_in_sync()


def test_auth_unique_values_reused_or_swapped_in_one_transaction_converge(synced):
    with psycopg_connect() as conn:
        with conn.transaction():  # deleted and created again with the same e-mail
            email, name = conn.execute("SELECT email, full_name FROM salesflow_auth.users WHERE id = 2").fetchone()
            conn.execute("DELETE FROM salesflow_auth.user_roles WHERE user_id = 2")
            conn.execute("DELETE FROM salesflow_auth.users WHERE id = 2")
            conn.execute(
                "INSERT INTO salesflow_auth.users (email, password_hash, full_name, created_at) "
                "VALUES (%s, 'x', %s, now())",
                [email, name],
            )
        with conn.transaction():  # two e-mails swapped
            a, b = (r[0] for r in conn.execute("SELECT email FROM salesflow_auth.users WHERE id IN (3, 4) ORDER BY id"))
            conn.execute("UPDATE salesflow_auth.users SET email = 'swap@example.com' WHERE id = 3")
            conn.execute("UPDATE salesflow_auth.users SET email = %s WHERE id = 4", [a])
            conn.execute("UPDATE salesflow_auth.users SET email = %s WHERE id = 3", [b])
    assert value("SELECT email FROM auth.users WHERE id = 3") == b
    assert value("SELECT email FROM auth.users WHERE id = 4") == a
    assert value("SELECT count(*) FROM auth.users WHERE email = %s", [email]) == 1
    assert_in_sync()


def test_truncate_is_refused_on_both_sides(synced):
    for table in ("activities", ACTIVITIES):
        with psycopg_connect() as conn, pytest.raises(errors.ObjectInUse, match="two-way sync"):
            conn.execute(on_tenant("TRUNCATE {} CASCADE", table))
    assert_in_sync()


def test_online_cutover_moves_nothing_and_finalize_archives_the_legacy_tables(synced):
    cut_over_online()
    assert "contacts" in table_names(TENANT)  # still real, still in sync
    with psycopg_connect() as conn:
        conn.execute(on_tenant("UPDATE {} SET phone = 'after cutover' WHERE id = 1", "contacts"))
    assert_in_sync()
    run("migrate_phase", "finalize", interactive=False, observe_seconds=0.5)
    assert "contacts" not in table_names(TENANT)
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 1", CONTACTS)) == "after cutover"
    assert twoway.synced_scopes() == []
    assert value("SELECT to_regnamespace('migrator_sync')") is None
    assert value("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'salesflow_sync%%'") == 0
    # the new sequence steps by 1 again, past every id issued
    with psycopg_connect() as conn:
        ids = [
            conn.execute(
                on_tenant("INSERT INTO {} (first_name, created_at) VALUES ('After', now()) RETURNING id", CONTACTS)
            ).fetchone()[0]
            for _ in range(2)
        ]
    assert ids[1] == ids[0] + 1


def test_a_sync_schema_an_earlier_release_made_gets_this_releases_functions(synced):
    """A release upgraded in the window: the sync schema is there but lacks a newer function; the next
    sync set-up adds it and keeps the schema-change guard (its event triggers are made again, not twice)."""
    with psycopg_connect() as conn:
        conn.execute("DROP FUNCTION migrator_sync.refuse_crossed_write(xid[], text)")
        conn.execute("COMMENT ON SCHEMA migrator_sync IS NULL")  # a release before the comment named its functions
    twoway.ensure_sync_schema()
    assert value("SELECT to_regprocedure('migrator_sync.refuse_crossed_write(xid[], text)') IS NOT NULL")
    assert twoway.ddl_guarded()
    with psycopg_connect() as conn:
        conn.execute(on_tenant("UPDATE {} SET phone = 'after the upgrade' WHERE id = 4", "contacts"))
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 4", CONTACTS)) == "after the upgrade"
