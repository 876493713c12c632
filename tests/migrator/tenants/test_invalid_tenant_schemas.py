"""Reliability: tenant_* schemas whose names are not valid tenant ids are never left behind silently,
and phase-wide steps check their own prerequisites (no tenant gates them)."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError
from psycopg import sql

from migrator import catalog, db
from migrator.config import get_config
from migrator.models import Status
from migrator.ops.teardown import drop_service_schemas
from migrator.reports.dashboard import build_dashboard
from migrator.tables import LEGACY_AUTH_TABLES
from tenants.models import Tenant
from tests.helpers import run
from tests.migrator.helpers import count, latest, one_line, refused_run, table_names

# name -> rows in its contacts table
INVALID = {
    "tenant_Acme": 3,
    "tenant_o'brien": 1,
    'tenant_x"y': 2,
    "tenant_with space": 4,
    "tenant_1abc": 5,
    "tenant_": 6,
}


def make_invalid_schemas(schemas: dict[str, int]) -> None:
    for name, rows in schemas.items():
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        db.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, first_name text)").format(sql.Identifier(name, "contacts"))
        )
        db.execute(
            sql.SQL("INSERT INTO {} SELECT g, 'x' || g FROM generate_series(1, %s) g").format(
                sql.Identifier(name, "contacts")
            ),
            [rows],
        )


def status_check() -> int:
    try:
        run("migrate_phase", "status", check=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_invalid_schemas_with_data_block_prepare_listing_their_rows(seeded):
    make_invalid_schemas(INVALID)

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "prepare", interactive=False)

    message = str(exc.value)
    assert one_line(message)
    for name, rows in INVALID.items():
        assert f"{name!r} ({rows} rows)" in message
    assert "--rename-schema NAME=NEW_ID" in message
    assert "--skip-schema NAME" in message
    assert latest("prepare/*/discover").status == Status.FAILED
    assert not Tenant.objects.exists()  # nothing registered: the operator decides first
    assert status_check() == 1


def test_an_invalid_schema_with_no_rows_does_not_block(seeded):
    make_invalid_schemas({"tenant_Empty": 0})

    run("migrate_phase", "prepare", interactive=False)

    excluded = latest("prepare/*/discover").details["excluded_schemas"]
    assert excluded == [{"schema": "tenant_Empty", "rows": 0, "reason": "no rows"}]


def test_skipped_schemas_are_recorded_and_shown_as_excluded_with_row_counts(seeded):
    make_invalid_schemas(INVALID)

    run("migrate_phase", "prepare", interactive=False, skip_schema=list(INVALID))

    excluded = {e["schema"]: (e["rows"], e["reason"]) for e in latest("prepare/*/discover").details["excluded_schemas"]}
    assert excluded == {name: (rows, "--skip-schema") for name, rows in INVALID.items()}
    text = run("migrate_phase", "status")
    for name, rows in INVALID.items():
        assert f"EXCLUDED {name!r}: {rows} rows not migrated (--skip-schema)" in text
    report = json.loads(run("migrate_phase", "status", format="json"))
    assert {e["schema"]: e["rows"] for e in report["excluded"]} == INVALID
    assert {e["schema"]: e["rows"] for e in build_dashboard().excluded} == INVALID  # the admin's dashboard
    assert sorted(Tenant.objects.values_list("tenant_id", flat=True)) == sorted(seeded["tenants"])


def test_a_skip_or_rename_of_a_schema_that_is_not_there_is_one_line(seeded):
    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "prepare", interactive=False, skip_schema=["tenant_Nope"])
    assert one_line(str(exc.value))
    assert "--skip-schema 'tenant_Nope': no tenant_* schema" in str(exc.value)

    with pytest.raises(CommandError, match=r"invalid tenant id 'Bad'") as exc:
        run("migrate_phase", "prepare", interactive=False, rename_schema=["tenant_Acme=Bad"])
    with pytest.raises(CommandError, match=r"expected OLD_SCHEMA=NEW_TENANT_ID"):
        run("migrate_phase", "prepare", interactive=False, rename_schema=["tenant_Acme"])


def test_a_renamed_schema_is_migrated_under_its_new_id(seeded):
    legacy_contacts = count("tenant_acme_0001", "contacts")
    db.execute('ALTER SCHEMA tenant_acme_0001 RENAME TO "tenant_Acme"')  # a legacy name no tenant id can have

    run("migrate_phase", "prepare", interactive=False, rename_schema=["tenant_Acme=acme"])

    assert not catalog.schema_exists("tenant_Acme")
    assert catalog.schema_exists("tenant_acme")
    register = latest("prepare/acme/register/tenant_acme")
    assert register.status == Status.COMPLETED
    assert register.details["renamed_from"] == "tenant_Acme"
    assert latest("prepare/*/discover").details["renamed_schemas"] == {"tenant_Acme": "acme"}
    run("migrate_phase", "schemas", interactive=False)
    run("migrate_phase", "data", interactive=False)
    assert count("tenant_acme", "contact_data_contacts") == legacy_contacts > 0
    assert latest("data/acme/validate/contact_data_contacts").status == Status.COMPLETED

    run("migrate_phase", "prepare", interactive=False, rename_schema=["tenant_Acme=acme"])  # a rerun is a no-op
    assert Tenant.objects.filter(tenant_id="acme").count() == 1


def test_cutover_with_no_valid_tenant_keeps_the_legacy_auth_tables_until_auth_is_migrated(seeded):
    for tenant_id in seeded["tenants"]:  # every legacy tenant schema has a name no tenant id can have
        db.execute(
            sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                sql.Identifier(f"tenant_{tenant_id}"), sql.Identifier(f"tenant_{tenant_id.upper()}")
            )
        )
    run(
        "migrate_phase",
        "prepare",
        interactive=False,
        skip_schema=[f"tenant_{tenant_id.upper()}" for tenant_id in seeded["tenants"]],
    )
    drop_service_schemas()  # as in a database where phase 2 never ran (the test database keeps them)
    legacy_auth = get_config().legacy_auth_schema

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "cutover", interactive=False)

    assert one_line(str(exc.value))
    assert "verify expected_schemas (all) never ran" in str(exc.value)  # refused before any step
    assert table_names(legacy_auth) >= set(LEGACY_AUTH_TABLES)

    # Phase-wide verification passes with no tenant at all: the auth step checks its own prerequisites.
    for phase in ("schemas", "security", "verify"):  # tables exist, but nothing validated them yet
        run("migrate_phase", phase, interactive=False)
    with pytest.raises(CommandError, match="phase data has not validated"):
        run("migrate_phase", "cutover", interactive=False)
    assert latest(f"cutover/*/archive_auth/{legacy_auth}").status == Status.FAILED
    assert table_names(legacy_auth) >= set(LEGACY_AUTH_TABLES)


def test_a_registered_tenant_whose_schema_was_dropped_fails_phase_2_naming_it_and_can_be_left_out(prepared):
    """Django's own error ("no schema has been selected to create in") named no schema."""
    db.execute("DROP SCHEMA tenant_globex_0002 CASCADE")

    _line, failed = refused_run("schemas", step="schemas/globex_0002/tenant_tables/tenant_globex_0002")

    assert failed.error_message == (
        "tenant globex_0002 is registered but its schema tenant_globex_0002 no longer exists (dropped since phase "
        "1): restore it (its legacy tables are in phase 1's backup), or leave the tenant out with --skip-schema "
        "tenant_globex_0002"
    )
    assert "contact_data_contacts" in table_names("tenant_acme_0001")  # the others go on

    run("migrate_phase", "schemas", "--skip-schema", "tenant_globex_0002", interactive=False)
    assert Tenant.objects.get(tenant_id="globex_0002").migration_state == "EXCLUDED"
