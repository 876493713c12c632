"""Cutover does not start while phase verify has a step that did not complete for the tenants it would cut
over, its phase-wide steps included; `all` never reaches cutover after a failed verify."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from psycopg import sql

from migrator import catalog, db
from migrator.config import get_config
from migrator.models import MigrationRecord, Status
from migrator.ops import twoway
from tenants.models import MigrationState, Tenant
from tests.helpers import QUICK_LOAD_TEST, run
from tests.migrator.helpers import table_names

TENANTS = ["acme_0001", "globex_0002", "empty_0001"]


def let_the_contact_role_read_auth_users(grant: bool = True) -> None:
    """Breaks verify's phase-wide role_isolation check (and only it): a service role reads another's table."""
    role = sql.Identifier(get_config().service_role("contact"))
    if grant:
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA auth TO {r}; GRANT SELECT ON auth.users TO {r}").format(r=role))
    else:
        db.execute(sql.SQL("REVOKE SELECT ON auth.users FROM {r}; REVOKE USAGE ON SCHEMA auth FROM {r}").format(r=role))


def assert_nothing_cut_over() -> None:
    for tenant in TENANTS:
        assert catalog.table_exists(f"tenant_{tenant}", "contacts"), tenant
        assert catalog.table_exists(f"tenant_{tenant}", "activities"), tenant
    assert catalog.table_exists(get_config().legacy_auth_schema, "users")
    archive = get_config().archive_schema
    assert not catalog.schema_exists(archive) or not catalog.tables_by_schema([archive])[archive]
    assert not Tenant.objects.filter(migration_state=MigrationState.LIVE).exists()
    assert not MigrationRecord.objects.filter(phase="cutover").exists()


def test_a_failed_phase_wide_verify_step_keeps_cutover_from_starting_until_verify_passes(migrated):
    run("migrate_phase", "security", interactive=False)
    let_the_contact_role_read_auth_users()
    with pytest.raises(CommandError, match="phase verify failed"):
        run("migrate_phase", "verify", interactive=False)
    # Every tenant passed its own checks: only the phase-wide step failed.
    assert set(Tenant.objects.values_list("migration_state", flat=True)) == {MigrationState.VERIFIED}

    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "cutover", interactive=True)  # refused before the operator is asked

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("cutover cannot start: phase verify has 1 step(s) not completed: ")
    assert "verify role_isolation (all) FAILED: " in message
    assert f"{get_config().service_role('contact')} can read auth.users" in message
    assert "nothing was archived" in message
    assert_nothing_cut_over()

    let_the_contact_role_read_auth_users(grant=False)
    run("migrate_phase", "verify", interactive=False)  # reruns the failed step only
    with pytest.raises(CommandError, match="needs confirmation"):  # ready now: the operator is asked
        run("migrate_phase", "cutover", interactive=True)
    run("migrate_phase", "cutover", interactive=False)
    assert set(Tenant.objects.values_list("migration_state", flat=True)) == {MigrationState.LIVE}
    assert not catalog.table_exists("tenant_acme_0001", "contacts")


def test_a_tenant_whose_verify_failed_keeps_every_tenant_from_cutover_but_may_be_left_out(migrated):
    run("migrate_phase", "security", interactive=False)
    db.execute("DROP INDEX tenant_globex_0002.activity_data_due_idx")
    with pytest.raises(CommandError, match="phase verify failed"):
        run("migrate_phase", "verify", interactive=False)

    with pytest.raises(CommandError, match=r"verify index_usage globex_0002 FAILED: .*does not use an index"):
        run("migrate_phase", "cutover", interactive=False)
    assert_nothing_cut_over()

    # The tenants that passed can go on their own.
    run("migrate_phase", "cutover", interactive=False, tenant=["acme_0001"])
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.LIVE
    assert Tenant.objects.get(tenant_id="globex_0002").migration_state != MigrationState.LIVE
    assert catalog.table_exists("tenant_globex_0002", "contacts")


def test_cutover_refuses_tenants_verify_never_checked(migrated):
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False, tenant=["acme_0001"])

    with pytest.raises(
        CommandError, match=r"has 10 step\(s\) not completed: verify tenant_tables empty_0001 never ran"
    ):
        run("migrate_phase", "cutover", interactive=False)
    assert_nothing_cut_over()


def test_all_stops_at_a_failed_verify_and_cuts_nothing_over(migrated):
    run("migrate_phase", "security", interactive=False)
    let_the_contact_role_read_auth_users()

    out = StringIO()
    with pytest.raises(CommandError, match="phase verify failed"):
        call_command(
            "migrate_phase", "all", interactive=False, format="jsonl", stdout=out, stderr=StringIO(), **QUICK_LOAD_TEST
        )

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["phase"], line["ok"]) for line in lines][-1] == ("verify", False)
    assert "cutover" not in [line["phase"] for line in lines]
    assert_nothing_cut_over()


def test_online_cutover_respects_the_same_gate(schemas_ready):
    run("migrate_phase", "data", "--online", interactive=False)
    run("migrate_phase", "security", interactive=False)
    let_the_contact_role_read_auth_users()
    with pytest.raises(CommandError, match="phase verify failed"):
        run("migrate_phase", "verify", interactive=False)

    with pytest.raises(CommandError, match=r"cutover cannot start: .*verify role_isolation \(all\) FAILED"):
        run("migrate_phase", "cutover", interactive=False)
    assert_nothing_cut_over()
    assert twoway.is_synced("tenant_acme_0001")  # still in two-way sync, legacy tables where they were
    assert "contacts" in table_names("tenant_acme_0001")
    assert not MigrationRecord.objects.filter(phase="cutover", status=Status.COMPLETED).exists()
