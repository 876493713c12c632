"""Service roles: the migrator drops only roles it created, never a pre-existing one; grants reach new tenants."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError
from psycopg import sql

from migrator import catalog, db
from migrator.config import get_config
from migrator.engine import tracking
from migrator.models import Status
from migrator.ops import grants
from tenants.models import Tenant
from tests.helpers import legacy_fingerprints, run
from tests.migrator.helpers import one_line

TENANTS = ["acme_0001", "globex_0002", "empty_0001"]


def owns_schema(role: str, schema: str) -> bool:
    return bool(
        db.fetchvalue("SELECT pg_get_userbyid(nspowner) = %s FROM pg_namespace WHERE nspname = %s", [role, schema])
    )


def has_privilege(role: str, schema: str, table: str, privilege: str = "SELECT") -> bool:
    return bool(
        db.fetchvalue(
            "SELECT has_table_privilege(%s, format('%%I.%%I', %s::text, %s::text), %s)",
            [role, schema, table, privilege],
        )
    )


def test_a_login_role_owning_the_legacy_auth_schema_is_refused_and_survives_rollback(migrated):
    config = get_config()
    role = config.service_role("auth")
    legacy = config.legacy_auth_schema
    r = sql.Identifier(role)
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(r))
    db.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(legacy), r))
    for (table,) in db.fetchall("SELECT tablename FROM pg_tables WHERE schemaname = %s", [legacy]):
        db.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(legacy, table), r))
    before = legacy_fingerprints(TENANTS)

    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "security", interactive=False)
    assert f"role {role}" in str(refused.value)
    assert one_line(str(refused.value))
    assert "log in" in tracking.latest_records("security")[f"security/*/service_role/{role}"].error_message

    run("migrate_phase", "rollback", interactive=False)
    assert catalog.role_exists(role)
    assert owns_schema(role, legacy)
    assert legacy_fingerprints(TENANTS) == before
    # the roles the migrator did create are gone
    assert not catalog.role_exists(config.service_role("contact"))


def test_a_preexisting_role_is_refused_unless_adopted_and_an_adopted_role_is_never_dropped(migrated):
    config = get_config()
    role = config.service_role("contact")
    r = sql.Identifier(role)
    db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(r))
    db.execute("CREATE SCHEMA crm_extra")
    db.execute("CREATE TABLE crm_extra.notes (id int PRIMARY KEY, body text)")
    db.execute("INSERT INTO crm_extra.notes VALUES (1, 'kept')")
    db.execute(sql.SQL("ALTER TABLE crm_extra.notes OWNER TO {}").format(r))
    # a privilege the role had before the migration: not the migrator's to revoke
    db.execute(sql.SQL("GRANT USAGE ON SCHEMA tenant_acme_0001 TO {}").format(r))
    try:
        with pytest.raises(CommandError, match="--adopt-roles") as refused:
            run("migrate_phase", "security", interactive=False)
        assert one_line(str(refused.value))

        run("migrate_phase", "security", interactive=False, adopt_roles=True)
        service_role = tracking.latest_records("security")[f"security/*/service_role/{role}"]
        assert service_role.status == Status.COMPLETED
        assert service_role.details["adopted"] is True
        assert has_privilege(role, "tenant_globex_0002", "contact_data_contacts")

        run("migrate_phase", "rollback", interactive=False)
        assert catalog.role_exists(role)
        assert db.fetchvalue("SELECT body FROM crm_extra.notes WHERE id = 1") == "kept"
        assert (
            db.fetchvalue("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'crm_extra.notes'::regclass")
            == role
        )
        # the migrator's grants are revoked, the role's own privilege stays
        assert not db.fetchvalue("SELECT has_schema_privilege(%s, 'tenant_globex_0002', 'USAGE')", [role])
        assert db.fetchvalue("SELECT has_schema_privilege(%s, 'tenant_acme_0001', 'USAGE')", [role])
        for created in (config.service_role("auth"), config.service_role("activity")):
            assert not catalog.role_exists(created)
    finally:
        db.execute("DROP SCHEMA IF EXISTS crm_extra CASCADE")


def test_rollback_does_not_drop_a_role_recreated_by_someone_else(migrated):
    """A role of the same name that is not the one phase 4 created (another oid) is not the migrator's."""
    config = get_config()
    run("migrate_phase", "security", interactive=False)
    role = config.service_role("activity")
    r = sql.Identifier(role)
    db.execute(sql.SQL("DROP OWNED BY {}").format(r))
    db.execute(sql.SQL("DROP ROLE {}").format(r))
    db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(r))
    run("migrate_phase", "rollback", interactive=False)
    assert catalog.role_exists(role)
    assert not catalog.role_exists(config.service_role("auth"))


def test_a_tenant_created_after_phase_4_gets_the_grants_and_verify_checks_it(migrated):
    config = get_config()
    run("migrate_phase", "security", interactive=False)
    Tenant(tenant_id="newco", name="NewCo").save()
    assert grants.privilege_problems(config, ["tenant_newco"], service_tables=False) == []

    # a deploy's migrate_schemas recreating a tenant table: the new table gets the grants too
    run("migrate_schemas", "activity_data", "zero", schema_name="tenant_newco", interactive=False, verbosity=0)
    run("migrate_schemas", schema_name="tenant_newco", interactive=False, verbosity=0)
    assert has_privilege(config.service_role("activity"), "tenant_newco", "activity_data_activities", "INSERT")
    assert grants.privilege_problems(config, ["tenant_newco"], service_tables=False) == []

    # verify covers tenants created in the target layout too
    db.execute(
        sql.SQL("REVOKE SELECT ON tenant_newco.contact_data_contacts FROM {}").format(
            sql.Identifier(config.service_role("contact"))
        )
    )
    with pytest.raises(CommandError, match="phase verify failed"):
        run("migrate_phase", "verify", interactive=False)
    failed = [r for r in tracking.latest_records("verify").values() if r.status == Status.FAILED]
    assert failed
    assert all("tenant_newco" in r.error_message for r in failed)


def test_a_tenant_created_before_phase_4_gets_no_grants(migrated):
    Tenant(tenant_id="early", name="Early").save()
    for role in get_config().service_roles.values():
        assert not catalog.role_exists(role)
    assert catalog.table_exists("tenant_early", "contact_data_contacts")


def test_phases_run_with_another_role_prefix_than_phase_4s_are_refused_in_one_line(migrated, settings):
    run("migrate_phase", "security", interactive=False)
    first = get_config().role_prefix
    settings.SALESFLOW = {**settings.SALESFLOW, "ROLE_PREFIX": f"{first}x"}

    for phase in ("security", "rollback"):
        with pytest.raises(CommandError) as refused:
            run("migrate_phase", phase, interactive=False)
        assert one_line(str(refused.value))
        assert f"under SALESFLOW_ROLE_PREFIX={first}, not {first}x" in str(refused.value)
    assert not catalog.role_exists(f"{first}x_auth")  # no second set of roles

    settings.SALESFLOW = {**settings.SALESFLOW, "ROLE_PREFIX": first}
    run("migrate_phase", "rollback", interactive=False)  # with the prefix the roles were made under
    assert not catalog.role_exists(f"{first}_auth")


def test_phase_4_grants_the_tables_of_tenants_the_application_created_before_it(migrated):
    """The grant a deploy gives a new tenant's tables waited for roles that did not exist yet; phase 4 and
    its reruns found nothing to do, and verify failed for good."""
    config = get_config()
    Tenant(tenant_id="early", name="Early").save()
    run("migrate_phase", "security", interactive=False)
    assert grants.privilege_problems(config, ["tenant_early"], service_tables=False) == []
    run("migrate_phase", "verify", interactive=False)  # its check of tenants made in the target layout passes


def test_a_whole_rollback_is_refused_while_tenants_created_in_the_target_layout_use_the_shared_tables(migrated):
    """Dropping the shared schemas with CASCADE took those tenants' foreign keys to the shared reference tables
    with it, silently; nothing put them back, and every check ended complete."""
    Tenant(tenant_id="newco", name="NewCo").save()
    foreign_keys = (
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'tenant_newco'::regnamespace"
    )
    before = db.fetchvalue(foreign_keys)
    assert before >= 2  # to its contacts and to the shared reference tables

    with pytest.raises(CommandError, match="created in the target layout") as refused:
        run("migrate_phase", "rollback", interactive=False)
    assert "\n" not in str(refused.value).strip()
    assert db.fetchvalue(foreign_keys) == before
    assert all(catalog.schema_exists(schema) for schema in get_config().service_roles)

    run("migrate_phase", "rollback", "--tenant", "acme_0001", interactive=False)  # one tenant still may
