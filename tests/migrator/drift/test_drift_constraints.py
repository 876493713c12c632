"""Phase 3 carries one tenant's own legacy CHECK and unique constraints to its new table, or leaves one
behind on the operator's word, or refuses a NOT VALID one that legacy rows break."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.core.management import CommandError
from django.db import IntegrityError, transaction
from psycopg import sql

from migrator import db
from migrator.core.errors import MigrationError
from migrator.models import Status
from migrator.ops.carried import carried_objects, carry_constraints
from migrator.phases.data import DataPhase
from tests.helpers import run
from tests.migrator.helpers import count, latest, one_line, records, rows

ACME, GLOBEX = "tenant_acme_0001", "tenant_globex_0002"
LEGACY = sql.Identifier(ACME, "contacts")
CHECK_DEF = "CHECK (email ~~ '%@%'::text)"
CI_INDEX_DEF = 'USING btree ((lower(email)) COLLATE pg_catalog."default") WHERE (email IS NOT NULL)'


def add_legacy_rules(check_not_valid: bool = False) -> None:
    """acme's legacy contacts refuse an email without @ and the same email in another case."""
    db.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT email_has_at CHECK (email LIKE '%@%'){}").format(
            LEGACY, sql.SQL(" NOT VALID" if check_not_valid else "")
        )
    )
    db.execute(
        sql.SQL("CREATE UNIQUE INDEX contacts_email_ci ON {} (lower(email)) WHERE email IS NOT NULL").format(LEGACY)
    )


def checks(schema: str, table: str) -> dict[str, tuple[str, bool]]:
    return {
        name: (definition, validated)
        for name, definition, validated in rows(
            "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint "
            "WHERE conrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) AND contype = 'c'",
            [schema, table],
        )
    }


def unique_indexes(schema: str, table: str) -> dict[str, tuple[str, bool]]:
    """Unique indexes other than the primary key: name -> (pg_get_indexdef, indisvalid)."""
    return {
        name: (definition, valid)
        for name, definition, valid in rows(
            "SELECT i.relname, pg_get_indexdef(x.indexrelid), x.indisvalid FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) "
            "AND x.indisunique AND NOT x.indisprimary",
            [schema, table],
        )
    }


def refused(statement: str, params: list[Any]) -> type[BaseException]:
    """The psycopg error class the new table raises for ``statement`` (which must fail)."""
    with pytest.raises(IntegrityError) as exc, transaction.atomic():
        db.execute(
            sql.SQL(statement).format(sql.Identifier(ACME, "contact_data_contacts")),
            params,
        )
    assert exc.value.__cause__ is not None
    return type(exc.value.__cause__)


def test_a_tenants_check_and_case_insensitive_partial_unique_index_are_carried_and_enforced(schemas_ready):
    add_legacy_rules()
    # Also: a unique constraint, a unique index the primary key already enforces, a performance index.
    db.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT contacts_phone_key UNIQUE (phone)").format(LEGACY))
    db.execute(sql.SQL("CREATE UNIQUE INDEX contacts_id_again ON {} (id)").format(LEGACY))
    db.execute(sql.SQL("CREATE INDEX contacts_company_idx ON {} (company)").format(LEGACY))

    # batches of 50: the table is copied without its indexes, which are rebuilt before the carry
    run("migrate_phase", "data", interactive=False, batch_size=50)

    assert checks(ACME, "contact_data_contacts") == {"email_has_at": ("CHECK ((email ~~ '%@%'::text))", True)}
    on_new_table = "ON tenant_acme_0001.contact_data_contacts USING btree"
    assert unique_indexes(ACME, "contact_data_contacts") == {
        "contacts_email_ci_carried": (
            f"CREATE UNIQUE INDEX contacts_email_ci_carried {on_new_table} (lower(email)) WHERE (email IS NOT NULL)",
            True,
        ),
        "contacts_phone_key_carried": (f"CREATE UNIQUE INDEX contacts_phone_key_carried {on_new_table} (phone)", True),
    }
    assert count(ACME, "contact_data_contacts") == 120
    email = rows(sql.SQL("SELECT email FROM {} WHERE email IS NOT NULL LIMIT 1").format(LEGACY))[0][0]
    insert = "INSERT INTO {} (id, email, created_at) VALUES (100000, %s, now())"
    assert refused(insert, ["no-at-sign"]) is psycopg.errors.CheckViolation
    assert refused(insert, [email.upper()]) is psycopg.errors.UniqueViolation
    # ... and the other tenant's table has neither
    assert checks(GLOBEX, "contact_data_contacts") == {}
    assert unique_indexes(GLOBEX, "contact_data_contacts") == {}
    with transaction.atomic():
        db.execute(
            sql.SQL(insert).format(sql.Identifier(GLOBEX, "contact_data_contacts")),
            ["no-at-sign"],
        )
        transaction.set_rollback(True)

    copy = latest("data/acme_0001/copy_table/contact_data_contacts")
    assert copy.details["constraints_carried"] == [
        {"legacy": "email_has_at", "kind": "check", "definition": CHECK_DEF, "target": "email_has_at"},
        {
            "legacy": "contacts_phone_key",
            "kind": "unique constraint",
            "definition": "UNIQUE (phone)",
            "target": "contacts_phone_key_carried",
        },
        {
            "legacy": "contacts_email_ci",
            "kind": "unique index",
            "definition": CI_INDEX_DEF,
            "target": "contacts_email_ci_carried",
        },
    ]
    assert copy.details["constraints_not_carried"] == [
        {
            "legacy": "contacts_company_idx",
            "kind": "index",
            "definition": 'USING btree (company COLLATE pg_catalog."default")',
            "reason": "not carried: performance index",
        }
    ]
    assert "constraints_left_behind" not in copy.details
    assert "constraints_carried" not in latest("data/globex_0002/copy_table/contact_data_contacts").details
    assert [(o["table"], o["target"]) for o in carried_objects("acme_0001", DataPhase.COPY_TABLE)] == [
        ("contact_data_contacts", "email_has_at"),
        ("contact_data_contacts", "contacts_phone_key_carried"),
        ("contact_data_contacts", "contacts_email_ci_carried"),
    ]
    assert carried_objects("globex_0002", DataPhase.COPY_TABLE) == []

    # A rerun is a no-op; the tenant passes validation and verification.
    run("migrate_phase", "data", interactive=False, batch_size=50)
    assert {r.attempt for r in records(phase="data", step="copy_table")} == {1}
    assert all(r.status == Status.COMPLETED for r in records(phase="data"))
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    assert {r.status for r in records(phase="verify")} == {Status.COMPLETED}


def test_a_copy_step_rerun_after_its_rules_were_carried_finds_them_and_carries_nothing_twice(schemas_ready):
    add_legacy_rules()
    db.execute(
        sql.SQL(
            "ALTER TABLE {} ADD CONSTRAINT owner_exclusive EXCLUDE USING btree (owner_id WITH =) WHERE (owner_id < 0)"
        ).format(LEGACY)
    )
    run("migrate_phase", "data", interactive=False, batch_size=50)
    before = (checks(ACME, "contact_data_contacts"), unique_indexes(ACME, "contact_data_contacts"))
    # As if killed after the carry committed but before the step was recorded: the step runs again,
    # deferring (dropping and remembering) the carried unique index with the table's own indexes.
    first = latest("data/acme_0001/copy_table/contact_data_contacts")
    first.status = Status.FAILED
    first.save(update_fields=["status"])

    run("migrate_phase", "data", interactive=False, batch_size=50)

    again = latest("data/acme_0001/copy_table/contact_data_contacts")
    assert (again.attempt, again.status) == (2, Status.COMPLETED)
    assert again.details["deferred"] > 0
    assert (checks(ACME, "contact_data_contacts"), unique_indexes(ACME, "contact_data_contacts")) == before
    carried = [(c["legacy"], c["target"]) for c in again.details["constraints_carried"]]
    assert carried == [(c["legacy"], c["target"]) for c in first.details["constraints_carried"]]
    assert carried == [
        ("email_has_at", "email_has_at"),
        ("owner_exclusive", "owner_exclusive_carried"),
        ("contacts_email_ci", "contacts_email_ci_carried"),
    ]
    assert rows(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'owner_exclusive_carried' "
        "AND conrelid = 'tenant_acme_0001.contact_data_contacts'::regclass"
    ) == [("EXCLUDE USING btree (owner_id WITH =) WHERE ((owner_id < 0))",)]
    assert count(ACME, "contact_data_contacts") == 120


def test_leave_constraint_leaves_a_rule_behind_and_records_it(schemas_ready):
    add_legacy_rules()

    run(
        "migrate_phase",
        "data",
        interactive=False,
        leave_constraint=["tenant_acme_0001.contacts.email_has_at", "tenant_*.contacts.*_ci"],
    )

    assert checks(ACME, "contact_data_contacts") == {}
    assert unique_indexes(ACME, "contact_data_contacts") == {}
    copy = latest("data/acme_0001/copy_table/contact_data_contacts")
    assert copy.details["constraints_left_behind"] == [
        {"legacy": "email_has_at", "kind": "check", "definition": CHECK_DEF},
        {"legacy": "contacts_email_ci", "kind": "unique index", "definition": CI_INDEX_DEF},
    ]
    assert "constraints_carried" not in copy.details
    assert carried_objects("acme_0001", DataPhase.COPY_TABLE) == []
    # the legacy table keeps them
    assert "email_has_at" in checks(ACME, "contacts")
    assert "contacts_email_ci" in unique_indexes(ACME, "contacts")


def test_a_not_valid_check_that_legacy_rows_break_refuses_the_tenant_until_left_behind(schemas_ready):
    db.execute(sql.SQL("UPDATE {} SET email = 'nobody' || id WHERE id IN (3, 5)").format(LEGACY))
    add_legacy_rules(check_not_valid=True)

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "data", interactive=False)

    message = str(exc.value)
    assert one_line(message)
    assert (
        "tenant_acme_0001.contacts: 2 rows break its CHECK constraint email_has_at (email ~~ '%@%'::text), added "
        "NOT VALID, which tenant_acme_0001.contact_data_contacts would enforce; nothing was copied: fix those rows, "
        "or pass --leave-constraint tenant_acme_0001.contacts.email_has_at to leave the constraint behind"
    ) in message
    failed = latest("data/acme_0001/copy_table/contact_data_contacts")
    assert failed.status == Status.FAILED
    assert count(ACME, "contact_data_contacts") == 0  # nothing half done
    assert checks(ACME, "contact_data_contacts") == {}
    assert unique_indexes(ACME, "contact_data_contacts") == {}
    assert latest("data/globex_0002/copy_table/contact_data_contacts").status == Status.COMPLETED

    run("migrate_phase", "data", interactive=False, leave_constraint=["tenant_acme_0001.contacts.email_has_at"])

    copy = latest("data/acme_0001/copy_table/contact_data_contacts")
    assert copy.status == Status.COMPLETED
    assert count(ACME, "contact_data_contacts") == 120
    assert [c["legacy"] for c in copy.details["constraints_left_behind"]] == ["email_has_at"]
    assert [c["target"] for c in copy.details["constraints_carried"]] == ["contacts_email_ci_carried"]
    assert checks(ACME, "contact_data_contacts") == {}


def test_a_malformed_leave_constraint_is_one_line(schemas_ready):
    with pytest.raises(
        CommandError, match=r"^--leave-constraint 'contacts\.email_has_at': expected SCHEMA\.TABLE\.NAME"
    ):
        run("migrate_phase", "data", interactive=False, leave_constraint=["contacts.email_has_at"])
    assert records(phase="data", step="copy_table") == []


def test_verify_accepts_a_smoke_row_that_a_carried_check_refuses(schemas_ready):
    # acme's rule: custom fields carry a tier (verify's smoke row has none)
    db.execute(
        sql.SQL(
            "ALTER TABLE {} ADD CONSTRAINT custom_fields_tier CHECK (custom_fields IS NULL OR custom_fields ? 'tier')"
        ).format(LEGACY)
    )
    run("migrate_phase", "data", interactive=False)
    run("migrate_phase", "security", interactive=False)

    run("migrate_phase", "verify", interactive=False)

    assert {r.status for r in records(phase="verify")} == {Status.COMPLETED}
    smoke = latest("verify/acme_0001/crud_smoke")
    assert smoke.details["refused_by_carried_constraint"] == "custom_fields_tier"
    assert smoke.details["message"] == (
        "the test contact was refused by custom_fields_tier, a constraint carried from the tenant's legacy table "
        "(rolled back)"
    )
    assert "refused_by_carried_constraint" not in latest("verify/globex_0002/crud_smoke").details
    assert count(ACME, "contact_data_contacts") == 120


def test_copied_rows_that_break_a_rule_fail_its_carry_with_nothing_carried(migrated):
    # As if a copied row broke a rule the legacy table enforced (a converted column, a row edited since):
    db.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT id_positive CHECK (id > 0)").format(LEGACY))
    db.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT email_has_at CHECK (email LIKE '%@%')").format(LEGACY))
    db.execute("UPDATE tenant_acme_0001.contact_data_contacts SET email = 'nobody' || id WHERE id IN (4, 6, 8)")

    with pytest.raises(MigrationError) as exc:
        carry_constraints(ACME, "contacts", "contact_data_contacts", ())

    message = str(exc.value)
    assert one_line(message)
    assert message.startswith(
        "tenant_acme_0001.contact_data_contacts: the check email_has_at of tenant_acme_0001.contacts "
        "(CHECK (email ~~ '%@%'::text)) cannot be carried: 3 copied rows break it: check constraint "
        '"email_has_at" of relation "contact_data_contacts" is violated by some row;'
    )
    assert message.endswith("or pass --leave-constraint tenant_acme_0001.contacts.email_has_at to leave it behind")
    assert checks(ACME, "contact_data_contacts") == {}  # id_positive, created first, rolled back with it
    report = carry_constraints(ACME, "contacts", "contact_data_contacts", ((ACME, "contacts", "email_*"),))
    assert [c["target"] for c in report.carried] == ["id_positive"]
    assert [c["legacy"] for c in report.left_behind] == ["email_has_at"]
