"""Deploys during the online window: a schema change that keeps the sync working goes through; one that would
break it (a synced column removed, renamed or retyped, a NOT NULL column with no database default, any change
of a legacy table, a synced table dropped) is refused whole, in its own transaction, with one line."""

from __future__ import annotations

import pytest
from psycopg import errors

from migrator.ops import twoway
from tests.migrator.helpers import later_env, manage, psycopg_connect, value
from tests.migrator.online.support import CONTACTS, TENANT, assert_in_sync, on_tenant

COLUMN_EXISTS = (
    "SELECT count(*) FROM information_schema.columns WHERE table_schema = %s AND table_name = %s AND column_name = %s"
)


@pytest.mark.parametrize(
    "change",
    [
        ["ALTER TABLE {} DROP COLUMN phone"],
        ["ALTER TABLE {} RENAME COLUMN phone TO telephone"],
        ["ALTER TABLE {} ALTER COLUMN phone TYPE varchar(200)"],
        # Django's AddField with a default=: added with a default, the default dropped in the same migration
        [
            "ALTER TABLE {} ADD COLUMN nickname text NOT NULL DEFAULT 'x'",
            "ALTER TABLE {} ALTER COLUMN nickname DROP DEFAULT",
        ],
    ],
)
def test_a_change_of_a_new_table_that_would_break_the_sync_is_refused(synced, change):
    assert twoway.ddl_guarded()

    def apply_in_one_transaction(conn) -> None:
        with conn.transaction():
            for statement in change:
                conn.execute(on_tenant(statement, CONTACTS))

    with psycopg_connect() as conn, pytest.raises(errors.ObjectInUse, match="two-way sync") as refused:
        apply_in_one_transaction(conn)
    assert "\n" not in refused.value.diag.message_primary
    assert value(COLUMN_EXISTS, [TENANT, CONTACTS, "phone"]) == 1
    with psycopg_connect() as conn:  # the sync still works
        conn.execute(on_tenant("UPDATE {} SET phone = 'still synced' WHERE id = 1", "contacts"))
    assert_in_sync()


def test_a_column_an_insert_can_leave_out_may_be_added_and_legacy_tables_may_not_change(synced):
    with psycopg_connect() as conn:
        conn.execute(on_tenant("ALTER TABLE {} ADD COLUMN nickname text", CONTACTS))
        conn.execute(on_tenant("ALTER TABLE {} ADD COLUMN priority int NOT NULL DEFAULT 5", CONTACTS))
        conn.execute(
            on_tenant("INSERT INTO {} (first_name, created_at) VALUES ('After the deploy', now())", "contacts")
        )
        with pytest.raises(errors.ObjectInUse, match="two-way sync"):
            conn.execute(on_tenant("ALTER TABLE {} ADD COLUMN extra text", "contacts"))
        with pytest.raises(errors.ObjectInUse, match="two-way sync"):  # every tenant's reference rows merge by it
            conn.execute("ALTER TABLE contact.contact_types DROP COLUMN name")
        with pytest.raises(errors.ObjectInUse, match="dropping it is refused"):
            conn.execute(on_tenant("DROP TABLE {} CASCADE", "activities"))
    assert value(on_tenant("SELECT priority FROM {} WHERE first_name = 'After the deploy'", CONTACTS)) == 5
    assert_in_sync()


def test_a_deploy_whose_migration_would_break_the_sync_is_refused_and_not_recorded(synced):
    result = manage("migrate_schemas", "--noinput", env=later_env())
    assert result.returncode != 0
    assert "two-way sync" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    recorded = value(
        on_tenant(
            "SELECT count(*) FROM {} WHERE app = 'contact_data' AND name = '0002_contact_channel'", "django_migrations"
        )
    )
    assert recorded == 0
    assert value(COLUMN_EXISTS, [TENANT, CONTACTS, "channel"]) == 0
    assert_in_sync()
