"""``seed_legacy``: the legacy layout it builds, determinism, refusal to overwrite, bad arguments."""

from __future__ import annotations

import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from psycopg import sql

from migrator import catalog
from migrator.config import get_config
from migrator.models import MigrationRecord
from migrator.tables import LEGACY_AUTH_TABLES, LEGACY_TENANT_TABLES
from tenants.models import Tenant
from tests.helpers import legacy_fingerprints, run
from tests.migrator.helpers import count, one_line, psycopg_connect, rows, value

POPULATED = ["acme_0001", "globex_0002", "initech_0003"]
EMPTY = ["empty_0001", "empty_0002"]


def test_builds_the_legacy_layout_with_the_asked_counts(clean_db):
    out = run("seed_legacy", tenants=3, contacts=50, activities=80, empty_tenants=2, seed=1)

    assert "Seeded 5 tenants, 150 contacts, 240 activities, 25 users" in out
    assert catalog.schemas_like_tenants() == sorted(f"tenant_{t}" for t in POPULATED + EMPTY)
    assert catalog.tables_by_schema(["salesflow_auth"])["salesflow_auth"] == set(LEGACY_AUTH_TABLES)
    assert count("salesflow_auth", "users") == 25  # default: 5 per tenant, at least 10
    for tenant in POPULATED + EMPTY:
        schema = f"tenant_{tenant}"
        assert catalog.tables_by_schema([schema])[schema] == set(LEGACY_TENANT_TABLES)
        populated = tenant in POPULATED
        assert count(schema, "contacts") == (50 if populated else 0)
        assert count(schema, "activities") == (80 if populated else 0)
        assert count(schema, "contact_types") >= 3
        assert count(schema, "activity_types") >= 3
        # every activity belongs to a contact of its own tenant and to one of its activity types
        assert (
            value(
                sql.SQL("SELECT count(*) FROM {} a LEFT JOIN {} c ON c.id = a.contact_id WHERE c.id IS NULL").format(
                    sql.Identifier(schema, "activities"), sql.Identifier(schema, "contacts")
                )
            )
            == 0
        )
    # the same code has different ids in different tenants (what phase 3 must remap)
    ids = {
        t: dict(rows(sql.SQL("SELECT code, id FROM {}").format(sql.Identifier(f"tenant_{t}", "contact_types"))))
        for t in POPULATED
    }
    shared_codes = set(ids["acme_0001"]) & set(ids["globex_0002"])
    assert any(ids["acme_0001"][code] != ids["globex_0002"][code] for code in shared_codes)


def test_the_first_tenant_can_be_larger_than_the_others(clean_db):
    out = run(
        "seed_legacy", "--tenants", "2", "--contacts", "10", "--activities", "20",
        "--first-tenant-contacts", "30", "--first-tenant-activities", "50", "--seed", "3",
    )  # fmt: skip

    assert "Seeded 2 tenants, 40 contacts, 70 activities" in out
    assert (count("tenant_acme_0001", "contacts"), count("tenant_acme_0001", "activities")) == (30, 50)
    assert (count("tenant_globex_0002", "contacts"), count("tenant_globex_0002", "activities")) == (10, 20)


def test_same_seed_same_data_other_seed_other_data(clean_db):
    tenants = ["acme_0001", "globex_0002"]
    run("seed_legacy", tenants=2, contacts=40, activities=60, seed=11)
    first = legacy_fingerprints(tenants)
    run("seed_legacy", tenants=2, contacts=40, activities=60, seed=11, replace=True, interactive=False)
    assert legacy_fingerprints(tenants) == first

    run("seed_legacy", tenants=2, contacts=40, activities=60, seed=12, replace=True, interactive=False)
    other = legacy_fingerprints(tenants)
    assert other.keys() == first.keys()
    for key in (
        "tenant_acme_0001.contacts",
        "tenant_globex_0002.contacts",
        "tenant_acme_0001.activities",
        "salesflow_auth.users",
    ):
        assert other[key][0] == first[key][0]  # same counts ...
        assert other[key][1] != first[key][1], key  # ... different content


def test_refuses_to_overwrite_without_replace(clean_db):
    run("seed_legacy", tenants=1, contacts=10, activities=10, seed=3)
    before = legacy_fingerprints(["acme_0001"])

    expected = r"^schema salesflow_auth already exists \(2 in all\); pass --replace to start over$"
    with pytest.raises(CommandError, match=expected) as exc:
        run("seed_legacy", tenants=1, contacts=20, activities=10, seed=4)
    assert one_line(str(exc.value))
    assert legacy_fingerprints(["acme_0001"]) == before


def test_replace_starts_over_and_forgets_migrator_state(clean_db):
    run("seed_legacy", tenants=2, contacts=10, activities=10, seed=3)
    run("migrate_phase", "prepare", interactive=False)
    assert Tenant.objects.count() == 2
    assert MigrationRecord.objects.exists()

    out = run("seed_legacy", tenants=1, contacts=5, activities=5, seed=3, replace=True, interactive=False)

    assert "dropped schema tenant_globex_0002" in out
    assert catalog.schemas_like_tenants() == ["tenant_acme_0001"]
    assert count("tenant_acme_0001", "contacts") == 5
    assert not Tenant.objects.exists()
    assert not MigrationRecord.objects.exists()


class Terminal(StringIO):
    """A stdin that is a terminal, for the question --replace asks."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answer", ["no", ""])
def test_replace_asks_first_and_anything_but_yes_drops_nothing(clean_db, monkeypatch, answer):
    run("seed_legacy", tenants=2, contacts=10, activities=10, seed=3)
    run("migrate_phase", "prepare", interactive=False)
    before = legacy_fingerprints(["acme_0001", "globex_0002"])
    monkeypatch.setattr(sys, "stdin", Terminal())
    asked = []
    monkeypatch.setattr("builtins.input", lambda question: asked.append(question) or answer)
    out = StringIO()

    with pytest.raises(CommandError, match=r"^cancelled: nothing was dropped$"):
        call_command("seed_legacy", "--tenants", "1", "--replace", stdout=out)

    assert asked == ["Type 'yes' to drop them: "]
    said = out.getvalue()
    assert "2 tenant schemas (tenant_acme_0001, ...)" in said
    assert "schema salesflow_auth" in said
    assert "the history of a migration (" in said
    assert legacy_fingerprints(["acme_0001", "globex_0002"]) == before
    assert Tenant.objects.count() == 2

    monkeypatch.setattr("builtins.input", lambda question: "yes")
    call_command("seed_legacy", "--tenants", "1", "--contacts", "5", "--activities", "5", "--replace", stdout=out)
    assert catalog.schemas_like_tenants() == ["tenant_acme_0001"]
    assert not Tenant.objects.exists()


def test_replace_off_a_terminal_without_noinput_is_one_line_and_drops_nothing(clean_db, monkeypatch):
    run("seed_legacy", tenants=1, contacts=10, activities=10, seed=3)
    before = legacy_fingerprints(["acme_0001"])
    monkeypatch.setattr(sys, "stdin", StringIO("yes\n"))  # a pipe, not someone who read the question

    with pytest.raises(CommandError) as refused:
        call_command("seed_legacy", "--tenants", "1", "--replace")

    assert one_line(str(refused.value))
    assert str(refused.value).startswith("--replace would drop database ")
    assert str(refused.value).endswith("run it on a terminal to confirm, or pass --noinput")
    assert legacy_fingerprints(["acme_0001"]) == before


def test_replace_of_an_empty_database_asks_nothing(clean_db, monkeypatch):
    monkeypatch.setattr(sys, "stdin", StringIO(""))
    call_command(
        "seed_legacy", "--tenants", "1", "--contacts", "2", "--activities", "2", "--replace", stdout=StringIO()
    )
    assert catalog.schemas_like_tenants() == ["tenant_acme_0001"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenants", "-1"], r"expected 0 or more, got -1$"),
        (["--contacts", "many"], r"expected a whole number, got 'many'$"),
        (
            ["--contacts", "0", "--activities", "5"],
            r"^activities need contacts: pass --contacts > 0 or --activities 0$",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors_and_create_nothing(clean_db, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("seed_legacy", *args)
    assert not catalog.schema_exists("salesflow_auth")
    assert catalog.schemas_like_tenants() == []


def test_zero_users_is_refused_in_one_line(clean_db):
    with pytest.raises(CommandError, match=r"^--users must be 1 or more"):
        call_command("seed_legacy", "--users", "0", "--tenants", "1")
    assert not catalog.schema_exists("salesflow_auth")


def test_replace_with_a_role_prefix_another_database_uses_is_one_line(clean_db):
    """Roles are the server's: a service role holding a grant in another database cannot be reset from here."""
    role = get_config().service_role("contact")
    other = f"{connection.settings_dict['NAME']}_prefix_clash"
    with psycopg_connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    try:
        with psycopg_connect(other) as elsewhere:
            elsewhere.execute("CREATE TABLE held (id int)")
            elsewhere.execute(sql.SQL("GRANT SELECT ON held TO {}").format(sql.Identifier(role)))
        with pytest.raises(CommandError, match=r"SALESFLOW_ROLE_PREFIX") as refused:
            run("seed_legacy", tenants=1, contacts=1, activities=1, replace=True, interactive=False)
        assert one_line(str(refused.value))
        assert f"role {role} cannot be dropped" in str(refused.value)
    finally:
        with psycopg_connect() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
