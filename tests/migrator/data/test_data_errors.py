"""Reliability: phase 3's errors show the real cause and advice that works.

Orphan rows and duplicate keys name the constraint and the rows (not "current transaction is
aborted"), an id that points at no reference row says so, a legacy row written below the copy's
progress is copied, legacy columns of another type are compared (in the legacy type's terms) and named,
and missing service schemas say which phase to run.
"""

from __future__ import annotations

import pytest
from django.core.management import CommandError
from psycopg import sql

from migrator import catalog, db
from migrator.models import MigrationRecord, Status
from migrator.ops import teardown
from migrator.tables import TENANT_DATA_TABLES, service_tables
from tests.helpers import run
from tests.migrator.helpers import content, count, latest, one_line, plain_columns, value, wrongly_remapped

TENANT = "acme_0001"
SCHEMA = f"tenant_{TENANT}"
CONTACTS = next(t for t in TENANT_DATA_TABLES if t.legacy_table == "contacts")
ACTIVITIES = next(t for t in TENANT_DATA_TABLES if t.legacy_table == "activities")
TYPE_COLUMN, TYPE_TABLE = next(iter(CONTACTS.remap.items()))


def drop_foreign_key(table: str, column: str) -> None:
    name = value(
        "SELECT c.conname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
        "AND a.attnum = c.conkey[1] WHERE c.conrelid = %s::regclass AND c.contype = 'f' AND a.attname = %s",
        [f"{SCHEMA}.{table}", column],
    )
    db.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(SCHEMA, table), sql.Identifier(name)))


def failed_data_run() -> str:
    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "data", interactive=False)
    assert one_line(str(exc.value))
    return str(exc.value)


def test_orphan_rows_name_the_foreign_key_and_the_missing_key(schemas_ready):
    drop_foreign_key("activities", "contact_id")
    db.execute(sql.SQL("UPDATE {} SET contact_id = 999999 WHERE id = 5").format(sql.Identifier(SCHEMA, "activities")))

    failed_data_run()

    error = latest(f"data/{TENANT}/copy_table/{ACTIVITIES.table}").error_message
    assert "current transaction is aborted" not in error
    assert "(contact_id)=(999999)" in error
    assert ACTIVITIES.table in error
    assert one_line(error)


def test_duplicate_legacy_keys_name_the_key(schemas_ready):
    db.execute(
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT contacts_pkey CASCADE").format(sql.Identifier(SCHEMA, "contacts"))
    )
    db.execute(sql.SQL("INSERT INTO {t} SELECT * FROM {t} WHERE id = 5").format(t=sql.Identifier(SCHEMA, "contacts")))

    failed_data_run()

    error = latest(f"data/{TENANT}/copy_table/{CONTACTS.table}").error_message
    assert "current transaction is aborted" not in error
    assert "(id)=(5)" in error
    assert "duplicate" in error
    assert one_line(error)


def test_an_id_pointing_at_no_reference_row_says_so_not_rerun_the_merge(schemas_ready):
    drop_foreign_key("contacts", TYPE_COLUMN)
    db.execute(
        sql.SQL("UPDATE {} SET {} = 4242 WHERE id IN (3, 4)").format(
            sql.Identifier(SCHEMA, "contacts"), sql.Identifier(TYPE_COLUMN)
        )
    )

    failed_data_run()

    error = latest(f"data/{TENANT}/copy_table/{CONTACTS.table}").error_message
    assert "merge_reference" not in error
    assert error.startswith(
        f"2 rows of {SCHEMA}.contacts.{TYPE_COLUMN} point at no row of {SCHEMA}.{TYPE_TABLE} (ids 4242)"
    )


def test_a_legacy_row_written_below_the_copy_progress_is_copied(migrated):
    # As a run that copied activities up to id 100 and then stopped, while row 50 was written
    # to the legacy table after the copy had passed it.
    target = sql.Identifier(SCHEMA, ACTIVITIES.table)
    db.execute(sql.SQL("DELETE FROM {} WHERE id > 100 OR id = 50").format(target))
    MigrationRecord.objects.filter(migration_id=f"data/{TENANT}/copy_table/{ACTIVITIES.table}").update(
        status=Status.FAILED
    )

    run("migrate_phase", "data", interactive=False)

    copied = latest(f"data/{TENANT}/copy_table/{ACTIVITIES.table}")
    assert copied.status == Status.COMPLETED
    assert copied.rows_copied == copied.rows_expected == 240
    assert content(SCHEMA, ACTIVITIES.table, plain_columns("activities")) == content(
        SCHEMA, "activities", plain_columns("activities")
    )
    assert wrongly_remapped(SCHEMA, "activities") == 0


def test_legacy_columns_of_another_type_are_compared_and_named(schemas_ready):
    legacy = sql.Identifier(SCHEMA, "contacts")
    db.execute(
        sql.SQL(
            "ALTER TABLE {} ALTER created_at TYPE timestamp, ALTER custom_fields TYPE json, ALTER phone TYPE char(20)"
        ).format(legacy)
    )

    run("migrate_phase", "data", interactive=False)

    validated = latest(f"data/{TENANT}/validate/{CONTACTS.table}")
    assert validated.status == Status.COMPLETED
    assert validated.source_fingerprint == validated.target_fingerprint
    assert "phone (character(20) in the legacy table, text in the target)" in validated.details["message"]
    assert count(SCHEMA, CONTACTS.table) == count(SCHEMA, "contacts")

    db.execute(sql.SQL("UPDATE {} SET phone = 'changed' WHERE id = 7").format(sql.Identifier(SCHEMA, CONTACTS.table)))
    with pytest.raises(CommandError):
        run("migrate_phase", "data", interactive=False, validate_only=True)
    error = latest(f"data/{TENANT}/validate/{CONTACTS.table}").error_message
    assert "differing keys (first 1): 7" in error
    assert (
        "created_at (timestamp without time zone in the legacy table, timestamp with time zone in the target)" in error
    )


def test_missing_service_schemas_say_which_phase_to_run(schemas_ready):
    teardown.drop_service_schemas()  # as a rollback leaves them
    assert not any(catalog.schema_exists(schema) for schema in service_tables())

    message = failed_data_run()

    assert "syntax error" not in message
    assert "run `migrate_phase schemas` first" in message
