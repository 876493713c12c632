"""Phase 1's drift report: each way a tenant's legacy tables differ is found before anything changes, and
the tenant is either refused (legacy untouched, the finding named in one line) or migrated exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import CommandError
from psycopg import sql

from migrator import db
from migrator.models import Disposition, DriftFinding, FindingKind, MigrationRecord, Status
from tenants.models import MigrationState, Tenant
from tests.helpers import run, table_fingerprint
from tests.migrator.helpers import count, latest, one_line, plain_columns, records, rows, table_names

ACME, GLOBEX, EMPTY = "tenant_acme_0001", "tenant_globex_0002", "tenant_empty_0001"


def tenant_fingerprints(tenant_ids: list[str]) -> dict[str, tuple[int, str]]:
    """Every table of the tenants' schemas, fingerprinted (the legacy tables and anything beside them)."""
    return {
        f"{schema}.{table}": table_fingerprint(schema, table)
        for schema in (f"tenant_{t}" for t in tenant_ids)
        for table in sorted(table_names(schema))
    }


def prepare(**options: Any) -> str:
    return run("migrate_phase", "prepare", interactive=False, **options)


def refused(exc: pytest.ExceptionInfo[CommandError]) -> str:
    message = str(exc.value)
    assert one_line(message)
    assert message.startswith("phase prepare failed:")
    return message


def findings(schema: str, kind: FindingKind | None = None) -> list[DriftFinding]:
    found = DriftFinding.objects.filter(tenant_schema=schema)
    return list(found.filter(kind=kind) if kind else found)


def register_error(tenant_id: str) -> str:
    row = latest(f"prepare/{tenant_id}/register/tenant_{tenant_id}")
    assert row.status == Status.FAILED
    return str(row.error_message)


def assert_refused_before_anything_changed(tenant_id: str, legacy_before: dict[str, Any]) -> None:
    """The tenant is not registered and its legacy tables are as they were (no target table in its schema)."""
    assert not Tenant.objects.filter(tenant_id=tenant_id).exists()
    assert tenant_fingerprints([tenant_id]) == legacy_before
    assert not {"contact_data_contacts", "activity_data_activities"} & table_names(f"tenant_{tenant_id}")


# --- refused: the tenant cannot be migrated as it is ----------------------------------------------------------


@pytest.mark.parametrize(
    ("drift_sql", "kind", "where", "says"),
    [
        (
            "ALTER TABLE tenant_acme_0001.contacts ADD COLUMN score numeric(10,2)",
            FindingKind.EXTRA_COLUMN,
            "tenant_acme_0001.contacts.score",
            "no target column",
        ),
        (
            "ALTER TABLE tenant_acme_0001.contacts DROP COLUMN phone",
            FindingKind.MISSING_COLUMN,
            "tenant_acme_0001.contacts.phone",
            "add the column to tenant_acme_0001.contacts",
        ),
        (
            (
                "ALTER TABLE tenant_acme_0001.activities ALTER COLUMN subject DROP NOT NULL; "
                "UPDATE tenant_acme_0001.activities SET subject = NULL WHERE id % 40 = 0"
            ),
            FindingKind.NULLABILITY,
            "tenant_acme_0001.activities.subject",
            "6 NULLs; the target column is NOT NULL",
        ),
        (
            (
                "CREATE TABLE tenant_acme_0001.vip_contacts (tier text) INHERITS (tenant_acme_0001.contacts); "
                "INSERT INTO tenant_acme_0001.vip_contacts (id, created_at, tier) VALUES (900001, now(), 'gold')"
            ),
            FindingKind.INHERITED,
            "tenant_acme_0001.contacts.vip_contacts",
            "vip_contacts: 1 rows, extra columns tier",
        ),
        (
            (
                "ALTER TABLE tenant_acme_0001.activities DROP CONSTRAINT activities_pkey; "
                "INSERT INTO tenant_acme_0001.activities (id, contact_id, activity_type_id, subject, created_at) "
                "SELECT id, contact_id, activity_type_id, subject, created_at FROM tenant_acme_0001.activities LIMIT 2"
            ),
            FindingKind.PRIMARY_KEY,
            "tenant_acme_0001.activities.id",
            "no primary key; 2 duplicated keys",
        ),
        (
            (
                "ALTER TABLE tenant_acme_0001.contacts ALTER COLUMN owner_id TYPE numeric(10,2); "
                "UPDATE tenant_acme_0001.contacts SET owner_id = 1.5 WHERE id IN (3, 7)"
            ),
            FindingKind.TYPE,
            "tenant_acme_0001.contacts.owner_id",
            "2 rows it cannot hold exactly, e.g. id 3, 7",
        ),
        (
            (
                "ALTER TABLE tenant_acme_0001.contacts ALTER COLUMN owner_id TYPE numeric; "
                "UPDATE tenant_acme_0001.contacts SET owner_id = 1e20 WHERE id = 5"
            ),
            FindingKind.TYPE,
            "tenant_acme_0001.contacts.owner_id",
            "1 rows it cannot hold exactly, e.g. id 5",
        ),
        (
            # by hand, near the end of bigint: the new table's ids (and online both sides') continue after it
            (
                "INSERT INTO tenant_acme_0001.contacts (id, first_name, last_name, email, created_at) "
                "OVERRIDING SYSTEM VALUE VALUES (9223372036854775806, 'Far', 'Away', 'far@example.com', now())"
            ),
            FindingKind.SEQUENCE,
            "tenant_acme_0001.contacts",
            (
                "max(id) 9223372036854775806 (issued up to 120) leaves the new table's sequence, which continues "
                "after the highest id, 1 ids"
            ),
        ),
    ],
    ids=[
        "extra-column",
        "missing-column",
        "nulls-into-not-null",
        "inheritance-child",
        "duplicate-ids",
        "fractions-into-bigint",
        "out-of-range",
        "id-near-the-end-of-bigint",
    ],
)
def test_drift_that_cannot_be_carried_refuses_the_tenant_in_one_line_and_the_others_go_on(
    seeded, drift_sql, kind, where, says
):
    db.execute(drift_sql)
    before = tenant_fingerprints(["acme_0001"])

    with pytest.raises(CommandError) as exc:
        prepare()

    message = refused(exc)
    error = register_error("acme_0001")
    assert where in error
    assert says in error
    assert "--skip-schema tenant_acme_0001" in error
    assert "[acme_0001] register" in message
    assert_refused_before_anything_changed("acme_0001", before)
    (finding,) = [f for f in findings(ACME, kind) if f.disposition == Disposition.REFUSED]
    assert says in f"{finding.detail} {finding.action}"
    # The other tenants are registered, and the report says the migration is not complete.
    assert set(Tenant.objects.values_list("tenant_id", flat=True)) == {"globex_0002", "empty_0001"}
    with pytest.raises(SystemExit):
        run("migrate_phase", "status", check=True)


def test_a_tenant_left_out_with_skip_schema_is_excluded_from_every_phase_untouched(seeded):
    db.execute("ALTER TABLE tenant_acme_0001.contacts ADD COLUMN score numeric(10,2)")
    before = tenant_fingerprints(["acme_0001"])

    run("migrate_phase", "all", interactive=False, skip_schema=[ACME])

    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.EXCLUDED
    assert tenant_fingerprints(["acme_0001"]) == before  # neither copied nor archived
    assert {"contacts", "activities"} <= table_names(ACME)
    assert not records(tenant_id="acme_0001", phase="data")
    assert Tenant.objects.get(tenant_id="globex_0002").migration_state == MigrationState.LIVE
    (finding,) = findings(ACME, FindingKind.EXTRA_COLUMN)
    assert (finding.disposition, finding.decided_by) == (Disposition.DECIDED, "--skip-schema")
    # Complete without it, and it is shown as left out; a later run without the option leaves it out too.
    status = json.loads(run("migrate_phase", "status", format="json"))
    assert status["complete"]
    assert "acme_0001" not in status["tenants"]
    assert [e["schema"] for e in status["excluded"]] == [ACME]
    assert "Nothing to do." in run("migrate_phase", "all", check=True)


def test_skip_schema_in_a_later_phase_leaves_a_registered_tenant_out_from_then_on(prepared):
    before = tenant_fingerprints(["globex_0002"])

    output = run("migrate_phase", "schemas", skip_schema=[GLOBEX])
    run("migrate_phase", "data")

    assert "left out by --skip-schema from now on: globex_0002" in output
    assert Tenant.objects.get(tenant_id="globex_0002").migration_state == MigrationState.EXCLUDED
    assert latest("schemas/globex_0002/exclude").status == Status.COMPLETED
    assert not records(tenant_id="globex_0002", phase="data")
    assert tenant_fingerprints(["globex_0002"]) == before
    assert count(ACME, "contact_data_contacts") == 120
    with pytest.raises(CommandError, match=r"tenant 'globex_0002' was left out with --skip-schema") as exc:
        run("migrate_phase", "data", tenant=["globex_0002"])
    assert one_line(str(exc.value))

    # `prepare --tenant ID` takes it back.
    prepare(tenant=["globex_0002"])
    assert Tenant.objects.get(tenant_id="globex_0002").migration_state == MigrationState.REGISTERED


def test_a_live_tenant_cannot_be_left_out(migrated):
    run("migrate_phase", "security")
    run("migrate_phase", "verify")
    run("migrate_phase", "cutover", interactive=False)

    with pytest.raises(CommandError, match=r"tenant acme_0001 is live") as exc:
        run("migrate_phase", "cutover", interactive=False, skip_schema=[ACME])

    assert one_line(str(exc.value))
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.LIVE


# --- needs a decision: an option says what to do ------------------------------------------------------------


def test_a_table_named_in_another_case_needs_a_decision_and_is_migrated_exactly_once_decided(seeded):
    db.execute('ALTER TABLE tenant_acme_0001.contacts RENAME TO "Contacts"')
    cols = plain_columns("contacts")
    legacy = rows(
        sql.SQL("SELECT {} FROM {} ORDER BY id").format(db.ident_list(cols), sql.Identifier(ACME, "Contacts"))
    )

    with pytest.raises(CommandError):
        prepare()
    error = register_error("acme_0001")
    assert "tenant_acme_0001.Contacts: name differs in case" in error
    assert "--rename-table tenant_acme_0001.Contacts=contacts" in error
    assert "Contacts" in table_names(ACME)  # untouched: nothing renamed without the decision

    run("migrate_phase", "all", interactive=False, rename_table=["tenant_acme_0001.Contacts=contacts"])

    (finding,) = findings(ACME, FindingKind.NAME_CASE)
    assert finding.disposition == Disposition.DECIDED
    assert finding.decided_by == "--rename-table tenant_acme_0001.Contacts=contacts"
    # Every legacy row is in the new table, compared by an independent query, not the tool's validation.
    migrated_rows = rows(
        sql.SQL("SELECT {} FROM {} ORDER BY id").format(
            db.ident_list(cols), sql.Identifier(ACME, "contact_data_contacts")
        )
    )
    assert migrated_rows == legacy
    assert len(legacy) == 120


def test_an_unknown_table_holding_rows_needs_a_decision_and_is_left_in_place_once_decided(seeded):
    db.execute(
        "CREATE TABLE tenant_acme_0001.notes_2019 (id int, body text); "
        "INSERT INTO tenant_acme_0001.notes_2019 VALUES (1, 'keep me'), (2, 'me too'); "
        "CREATE TABLE tenant_globex_0002.scratch (id int)"  # no rows: not a finding
    )

    with pytest.raises(CommandError):
        prepare()
    error = register_error("acme_0001")
    assert "tenant_acme_0001.notes_2019: unknown table with rows (2 rows" in error
    assert "--leave-table tenant_acme_0001.notes_2019" in error
    assert not findings(GLOBEX, FindingKind.UNKNOWN_TABLE)

    run("migrate_phase", "all", interactive=False, leave_table=["*.notes_2019"])

    assert count(ACME, "notes_2019") == 2  # left where it was, untouched
    (finding,) = findings(ACME, FindingKind.UNKNOWN_TABLE)
    assert (finding.disposition, finding.decided_by) == (Disposition.DECIDED, "--leave-table")


def test_a_legacy_only_foreign_key_needs_a_decision(seeded):
    db.execute(
        "ALTER TABLE tenant_acme_0001.contacts ADD CONSTRAINT contacts_owner_fk "
        "FOREIGN KEY (owner_id) REFERENCES salesflow_auth.users(id)"
    )
    with pytest.raises(CommandError):
        prepare()
    assert "--leave-constraint tenant_acme_0001.contacts.contacts_owner_fk" in register_error("acme_0001")

    prepare(leave_constraint=["tenant_acme_0001.contacts.contacts_owner_fk"])

    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.REGISTERED
    (finding,) = findings(ACME, FindingKind.CONSTRAINT)
    assert finding.disposition == Disposition.DECIDED


# --- carried: reported, and taken care of --------------------------------------------------------------------


def test_carried_drift_is_reported_and_registers(seeded):
    db.execute(
        "ALTER TABLE tenant_acme_0001.contacts ADD CONSTRAINT email_has_at CHECK (email LIKE '%@%'); "
        "CREATE UNIQUE INDEX contacts_email_ci ON tenant_acme_0001.contacts (lower(email)) WHERE email IS NOT NULL; "
        "ALTER TABLE tenant_acme_0001.activities SET UNLOGGED; "
        "SELECT setval(pg_get_serial_sequence('tenant_acme_0001.contacts', 'id'), 100000); "
        "ALTER TABLE tenant_globex_0002.contacts ALTER COLUMN owner_id TYPE integer; "
        'ALTER TABLE tenant_globex_0002.contacts ALTER COLUMN company TYPE text COLLATE "C"; '
        "ALTER TABLE tenant_globex_0002.activities ALTER COLUMN created_at SET DEFAULT now(); "
        "ALTER TABLE tenant_globex_0002.contacts ALTER COLUMN phone TYPE char(20)"
    )

    output = prepare()

    assert set(Tenant.objects.values_list("tenant_id", flat=True)) == {"acme_0001", "globex_0002", "empty_0001"}
    kinds = {
        (f.tenant_schema, f.kind, f.object_name) for f in DriftFinding.objects.exclude(kind=FindingKind.MISSING_TABLE)
    }
    assert kinds == {
        (ACME, FindingKind.CONSTRAINT, "email_has_at"),
        (ACME, FindingKind.INDEX, "contacts_email_ci"),
        (ACME, FindingKind.UNLOGGED, ""),
        (ACME, FindingKind.SEQUENCE, "tenant_acme_0001.contacts_id_seq"),
        (GLOBEX, FindingKind.TYPE, "owner_id"),
        (GLOBEX, FindingKind.TYPE, "phone"),
        (GLOBEX, FindingKind.COLLATION, "company"),
        (GLOBEX, FindingKind.DEFAULT, "created_at"),
    }
    assert {f.disposition for f in DriftFinding.objects.all()} == {Disposition.CARRIED}
    assert "1 tenant (tenant_acme_0001): contacts.tenant_acme_0001.contacts_id_seq: sequence (issued up to 100000" in (
        output
    )
    assert "integer in the legacy table, bigint in the target" in output
    assert "the blanks char(n) pads its values with are not carried" in output  # what the application reads
    assert not findings(EMPTY)  # empty tables of the expected shape: nothing to report


def test_partitioned_tables_and_shared_sequences_are_reported_as_carried(seeded):
    db.execute(
        "DROP TABLE tenant_empty_0001.contacts CASCADE; "
        "CREATE TABLE tenant_empty_0001.contacts (LIKE tenant_acme_0001.contacts, PRIMARY KEY (id)) "
        "PARTITION BY RANGE (id); "
        "CREATE TABLE tenant_empty_0001.contacts_low PARTITION OF tenant_empty_0001.contacts "
        "FOR VALUES FROM (MINVALUE) TO (1000); "
        "CREATE TABLE tenant_empty_0001.contacts_high PARTITION OF tenant_empty_0001.contacts "
        "FOR VALUES FROM (1000) TO (MAXVALUE); "
        "CREATE SEQUENCE tenant_acme_0001.shared_ids START 500000; "
        "ALTER TABLE tenant_acme_0001.contact_types ALTER COLUMN id DROP IDENTITY; "
        "ALTER TABLE tenant_acme_0001.contact_types ALTER COLUMN id "
        "SET DEFAULT nextval('tenant_acme_0001.shared_ids'); "
        "ALTER TABLE tenant_acme_0001.tag_categories ALTER COLUMN id DROP IDENTITY; "
        "ALTER TABLE tenant_acme_0001.tag_categories ALTER COLUMN id "
        "SET DEFAULT nextval('tenant_acme_0001.shared_ids')"
    )

    report = json.loads(run("migrate_phase", "prepare", plan=True, format="json"))["drift"]

    shared = [g for g in report if g["kind"] == FindingKind.SHARED_SEQUENCE]
    assert {g["table"] for g in shared} == {"contact_types", "tag_categories"}
    (partitioned,) = [g for g in report if g["kind"] == FindingKind.PARTITIONED]
    assert (partitioned["examples"], partitioned["detail"]) == ([EMPTY], "partitions: contacts_high, contacts_low")
    assert all(g["disposition"] == Disposition.CARRIED for g in [*shared, partitioned])
    # The partitions are part of their table, not unknown tables.
    assert not [g for g in report if g["kind"] == FindingKind.UNKNOWN_TABLE]


# --- the report: --plan changes nothing, identical drift is one line -----------------------------------------


def test_identical_drift_of_many_tenants_is_one_line_and_plan_changes_nothing(seeded):
    for schema in (ACME, GLOBEX, EMPTY):
        db.execute(sql.SQL("ALTER TABLE {} ADD COLUMN legacy_flag boolean").format(sql.Identifier(schema, "contacts")))
    before = tenant_fingerprints(["acme_0001", "globex_0002"])

    output = run("migrate_phase", "prepare", plan=True)

    lines = [line for line in output.splitlines() if "legacy_flag" in line]
    assert lines == [
        (
            "  3 tenants (tenant_acme_0001, tenant_empty_0001, tenant_globex_0002): contacts.legacy_flag: extra "
            "column (boolean) -- refused: no target column: add it to the target model, drop it from the legacy "
            "table deliberately, or --skip-schema tenant_<id>"
        )
    ]
    assert tenant_fingerprints(["acme_0001", "globex_0002"]) == before
    # --plan changes nothing: no finding recorded, no tenant registered, no step run.
    assert not DriftFinding.objects.exists()
    assert not Tenant.objects.exists()
    assert not records()


def test_skip_schema_given_a_tenant_id_instead_of_its_schema_is_refused_not_ignored(schemas_ready):
    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "data", "--skip-schema", "globex_0002", interactive=False)

    assert str(refused.value).endswith(
        "--skip-schema 'globex_0002' is not a tenant schema's name: give the schema "
        "('tenant_globex_0002' for tenant 'globex_0002')"
    )
    assert not MigrationRecord.objects.filter(phase="data").exists()  # globex was not migrated after all
