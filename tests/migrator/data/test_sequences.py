"""The new tables' sequences continue after every id the legacy sequences ever issued, not only after
the highest id copied: rows deleted from a legacy table took their ids with them, but those ids were
issued once (an id is never issued twice)."""

from __future__ import annotations

from psycopg import sql

from migrator import db
from tests.helpers import run
from tests.migrator.helpers import latest, value


def highest_id(schema: str, table: str) -> int | None:
    return value(sql.SQL("SELECT max(id) FROM {}").format(sql.Identifier(schema, table)))


ACME = "tenant_acme_0001"
GLOBEX = "tenant_globex_0002"


def next_id(schema: str, table: str) -> int:
    """The id an insert with the default id gets now."""
    return int(
        value("SELECT nextval(pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), 'id'))", [schema, table])
    )


def legacy_setval(schema: str, table: str, last_value: int, is_called: bool = True) -> None:
    db.execute(
        "SELECT setval(pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), 'id'), %s, %s)",
        [schema, table, last_value, is_called],
    )


def test_a_tenant_table_continues_after_its_legacy_sequence_not_only_its_highest_id(schemas_ready):
    legacy_setval(ACME, "contacts", 5000)  # ids up to 5,000 issued, their rows deleted since
    # Activities inserted with their default id and deleted again: the highest ones are gone. (The seed
    # gave every row its id, so the identity is first moved past them, as an application's inserts would.)
    legacy_setval(ACME, "activities", int(highest_id(ACME, "activities")))
    issued = [
        row[0]
        for row in db.fetchall(
            sql.SQL(
                "INSERT INTO {a} (contact_id, activity_type_id, subject, created_at) "
                "SELECT (SELECT min(id) FROM {c}), (SELECT min(id) FROM {t}), 'gone', now() "
                "FROM generate_series(1, 3) RETURNING id"
            ).format(
                a=sql.Identifier(ACME, "activities"),
                c=sql.Identifier(ACME, "contacts"),
                t=sql.Identifier(ACME, "activity_types"),
            )
        )
    ]
    db.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(ACME, "activities")), [issued])
    highest_activity = int(value(sql.SQL("SELECT max(id) FROM {}").format(sql.Identifier(ACME, "activities"))))
    assert max(issued) > highest_activity

    run("migrate_phase", "data", interactive=False)

    assert next_id(ACME, "contact_data_contacts") == 5001
    assert next_id(ACME, "activity_data_activities") == max(issued) + 1
    details = latest("data/acme_0001/copy_table/contact_data_contacts").details
    assert details["sequence_continues_after"] == 5000
    assert details["legacy_sequence_last_value"] == 5000
    # A tenant whose legacy sequences issued nothing beyond its rows continues after its highest id.
    details = latest("data/globex_0002/copy_table/contact_data_contacts").details
    assert details["sequence_continues_after"] == highest_id(GLOBEX, "contacts")
    assert next_id(GLOBEX, "contact_data_contacts") == details["sequence_continues_after"] + 1


def test_an_auth_table_keeps_its_ids_and_continues_after_its_legacy_sequence(schemas_ready):
    legacy_setval("salesflow_auth", "users", 900)
    legacy_setval("salesflow_auth", "roles", 300, is_called=False)  # next would be 300: 299 was the last issued

    run("migrate_phase", "data", interactive=False)

    assert next_id("auth", "users") == 901
    assert latest("data/*/copy_auth/users").details["legacy_sequence_last_value"] == 900
    assert next_id("auth", "roles") == 300


def test_a_plain_default_sequence_shared_by_two_legacy_tables_counts_for_both(schemas_ready):
    """``id DEFAULT nextval('seq')`` with no identity and no owner: the sequence is found through the default."""
    db.execute(
        sql.SQL(
            "ALTER TABLE {c} ALTER COLUMN id DROP IDENTITY; ALTER TABLE {a} ALTER COLUMN id DROP IDENTITY; "
            "CREATE SEQUENCE {s}; SELECT setval({name}, 7777); "
            "ALTER TABLE {c} ALTER COLUMN id SET DEFAULT nextval({name}); "
            "ALTER TABLE {a} ALTER COLUMN id SET DEFAULT nextval({name})"
        ).format(
            c=sql.Identifier(GLOBEX, "contacts"),
            a=sql.Identifier(GLOBEX, "activities"),
            s=sql.Identifier(GLOBEX, "legacy_ids"),
            name=sql.Literal(f"{GLOBEX}.legacy_ids"),
        )
    )

    run("migrate_phase", "data", interactive=False)

    assert next_id(GLOBEX, "contact_data_contacts") == 7778
    assert next_id(GLOBEX, "activity_data_activities") == 7778
    details = latest("data/globex_0002/copy_table/activity_data_activities").details
    assert (details["legacy_sequence_last_value"], details["sequence_continues_after"]) == (7777, 7777)


def test_merged_reference_tables_take_new_ids_whatever_the_legacy_sequences_issued(schemas_ready):
    legacy_setval(ACME, "contact_types", 1_000_000)

    run("migrate_phase", "data", interactive=False)

    shared = int(value("SELECT count(*) FROM contact.contact_types"))
    assert value("SELECT max(id) FROM contact.contact_types") == shared
    assert next_id("contact", "contact_types") == shared + 1
    assert latest("data/*/merge_reference/contact_types").details["sequence_continues_after"] == shared


def test_cutover_continues_after_ids_the_legacy_sequence_issued_since_phase_3(migrated):
    """An insert deleted again after phase 3 leaves the content as validated, and the sequence ahead."""
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    legacy_setval(ACME, "contacts", int(highest_id(ACME, "contacts")))
    gone = value(
        sql.SQL("INSERT INTO {} (first_name, created_at) VALUES ('gone', now()) RETURNING id").format(
            sql.Identifier(ACME, "contacts")
        )
    )
    db.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(ACME, "contacts")), [gone])
    legacy_setval("salesflow_auth", "users", 4242)

    run("migrate_phase", "cutover", interactive=False)

    assert next_id(ACME, "contact_data_contacts") == gone + 1
    assert next_id("auth", "users") == 4243
    sequences = latest("cutover/*/archive_auth/salesflow_auth").details["sequences"]
    assert sequences["users"]["legacy_sequence_last_value"] == 4242
