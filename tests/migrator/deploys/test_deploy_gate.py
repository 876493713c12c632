"""The deploy gate (`migrate_phase status --deploy-check`), the migration's state in `status --format json`,
and `migrate_schemas` refusing a registry row that names no tenant schema."""

from __future__ import annotations

import json
from typing import Any

from django.db import connection
from psycopg import sql

from migrator import db
from migrator.engine.lock import MigratorLock
from migrator.models import DEPLOY_KEY, MigrationRecord, Status
from migrator.ops import constraints
from migrator.tables import TENANT_DATA_TABLES
from tests.helpers import run
from tests.migrator.helpers import manage, manage_env, manage_here, one_line, rows, value

LATER_SETTINGS = "tests.migrator.later_migration_settings"
LATER_MIGRATION = ("contact_data", "0002_contact_nickname")


def later_env() -> dict[str, str]:
    return {**manage_env(), "DJANGO_SETTINGS_MODULE": LATER_SETTINGS}


def deploy_check() -> tuple[int, str]:
    result = manage_here("migrate_phase", "status", "--deploy-check")
    return result.returncode, result.stdout.strip()


def status_json() -> dict[str, Any]:
    result = manage_here("migrate_phase", "status", "--format", "json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def recorded_migrations(schema: str) -> list[tuple[Any, ...]]:
    return rows(sql.SQL("SELECT app, name FROM {}").format(sql.Identifier(schema, "django_migrations")))


def newer_attempt(phase: str, status: str, tenant_id: str | None = None) -> MigrationRecord:
    """A newer attempt of one of ``phase``'s steps, in ``status``."""
    record = MigrationRecord.objects.filter(phase=phase, tenant_id=tenant_id).order_by("-attempt").first()
    assert record is not None
    return MigrationRecord.objects.create(
        migration_id=record.migration_id,
        status=status,
        phase=record.phase,
        phase_number=record.phase_number,
        tenant_id=record.tenant_id,
        step=record.step,
        target=record.target,
        attempt=record.attempt + 100,
        host="h",
        error_message="boom" if status == Status.FAILED else None,
    )


def test_a_fresh_database_is_not_started_and_safe_to_deploy(seeded: dict[str, Any]) -> None:
    document = status_json()
    assert document["state"] == "not started"
    assert document["deploy_check"]["safe"] is True
    assert deploy_check()[0] == 0


def test_a_migrated_database_is_safe_to_deploy_and_its_state_follows_the_tracking_rows(
    migrated: dict[str, Any],
) -> None:
    code, line = deploy_check()
    assert code == 0, line
    assert one_line(line)
    document = status_json()
    assert document["deploy_check"] == {"safe": True, "reason": line}
    assert document["state"] == "running"  # phases 4-6 still to run

    failed = newer_attempt("data", Status.FAILED, migrated["tenants"][0])
    assert status_json()["state"] == "failed"
    assert deploy_check()[0] == 0  # a failed copy step holds no DDL now
    failed.delete()

    run("migrate_phase", "rollback", interactive=False)
    assert status_json()["state"] == "rolled back"
    assert deploy_check()[0] == 0


def test_the_state_is_complete_once_every_phase_ran(migrated: dict[str, Any]) -> None:
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    run("migrate_phase", "cutover", interactive=False)
    document = status_json()
    assert document["complete"] is True
    assert document["state"] == "complete"
    assert manage_here("migrate_phase", "status", "--check").returncode == 0
    assert deploy_check()[0] == 0


def test_a_phase_that_changes_schemas_closes_the_gate(migrated: dict[str, Any]) -> None:
    tenant = migrated["tenants"][0]
    running = newer_attempt("data", Status.RUNNING, tenant)
    code, line = deploy_check()
    assert code == 1
    assert one_line(line)
    assert "phase data was interrupted" in line, line
    assert running.migration_id in line
    assert status_json()["deploy_check"]["safe"] is False
    running.delete()

    with MigratorLock("data"):
        code, line = deploy_check()
        assert code == 1
        assert one_line(line)
        assert "migrate_phase data" in line, line
        assert "is running" in line
        assert status_json()["state"] == "running"
    # a phase that changes no schema does not close it
    with MigratorLock("verify"):
        assert deploy_check()[0] == 0
    assert deploy_check()[0] == 0


def test_a_registered_tenant_whose_schema_is_gone_fails_both_checks_and_shows_in_status(
    migrated: dict[str, Any],
) -> None:
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    run("migrate_phase", "cutover", interactive=False)
    schema = f"tenant_{migrated['tenants'][1]}"
    db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

    code, line = deploy_check()
    assert code == 1
    assert one_line(line)
    assert schema in line, line
    assert "missing" in line
    assert manage_here("migrate_phase", "status", "--check").returncode == 1
    text = manage_here("migrate_phase", "status").stdout
    assert f"MISSING {schema}" in text
    document = status_json()
    assert document["missing_schemas"] == [schema]
    assert document["complete"] is False
    # a deploy migrates the others and names it, not Django's "no schema has been selected to create in"
    deploy = manage_here("migrate_schemas")
    assert deploy.returncode == 1
    assert f"names schema '{schema}', which does not exist" in deploy.stderr
    assert "no schema has been selected" not in deploy.stdout + deploy.stderr


def test_a_failed_migrate_schemas_in_one_tenant_fails_both_checks_until_a_rerun_migrates_it(
    migrated: dict[str, Any],
) -> None:
    broken = f"tenant_{migrated['tenants'][0]}"
    # The later migration's column already exists there: its ALTER TABLE fails in that schema only.
    db.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN nickname integer").format(sql.Identifier(broken, "contact_data_contacts"))
    )
    connection.close()
    result = manage("migrate_schemas", "--noinput", env=later_env())
    assert result.returncode != 0

    code, line = deploy_check()
    assert code == 1
    assert one_line(line)
    assert f"the last migrate_schemas failed in 1 tenant schema(s): {broken}" in line, line
    assert manage_here("migrate_phase", "status", "--check").returncode == 1
    assert f"DEPLOY FAILED {broken}" in manage_here("migrate_phase", "status").stdout
    assert list(status_json()["deploy_failures"]) == [broken]
    assert MigrationRecord.objects.filter(migration_id=DEPLOY_KEY).latest("attempt").status == Status.FAILED

    db.execute(sql.SQL("ALTER TABLE {} DROP COLUMN nickname").format(sql.Identifier(broken, "contact_data_contacts")))
    connection.close()
    again = manage("migrate_schemas", "--noinput", env=later_env())
    assert again.returncode == 0, again.stderr
    assert deploy_check()[0] == 0
    assert status_json()["deploy_failures"] == {}


def test_migrate_schemas_refuses_a_registry_row_naming_a_service_schema(migrated: dict[str, Any]) -> None:
    for constraint in ("tenants_tenant_id_valid", "tenants_schema_is_tenant_id"):
        db.execute(sql.SQL("ALTER TABLE public.tenants DROP CONSTRAINT {}").format(sql.Identifier(constraint)))
    db.execute(
        "INSERT INTO public.tenants (schema_name, tenant_id, name, active, migration_state, created_at, updated_at) "
        "VALUES ('auth', 'auth', 'intruder', true, 'NEW', now(), now())"
    )
    connection.close()

    result = manage("migrate_schemas", "--noinput", env=later_env())

    assert result.returncode != 0
    refusals = [line for line in result.stderr.splitlines() if "'auth'" in line and "refused" in line]
    assert len(refusals) >= 1, result.stderr
    assert "Traceback" not in result.stderr
    assert value("SELECT to_regclass('auth.contact_data_contacts')") is None
    assert value("SELECT to_regclass('auth.django_migrations')") is None
    for tenant in migrated["tenants"]:
        assert LATER_MIGRATION in recorded_migrations(f"tenant_{tenant}")
    assert "auth" in status_json()["deploy_failures"]


def test_indexes_a_copy_dropped_and_did_not_rebuild_close_the_gate_until_data_rebuilds_them(
    schemas_ready: dict[str, Any],
) -> None:
    """A copy that failed after dropping its table's indexes and foreign keys (a lost connection) leaves no
    RUNNING step: the gate asks for the rebuild, since a deploy's index change would meet it."""
    schema, table = "tenant_acme_0001", TENANT_DATA_TABLES[1].target_table
    assert constraints.defer_constraints(schema, table) > 0
    code, line = deploy_check()
    assert code == 1
    assert one_line(line)
    assert f"{schema}.{table}" in line, line
    assert "rerun `migrate_phase data`" in line
    assert status_json()["deploy_check"]["safe"] is False

    run("migrate_phase", "data", interactive=False)

    assert constraints.tables_with_deferred() == []
    assert deploy_check()[0] == 0


def test_a_failed_migrate_schemas_of_the_only_registered_tenant_is_recorded_and_ends_in_one_line(
    migrated: dict[str, Any],
) -> None:
    only = f"tenant_{migrated['tenants'][0]}"
    db.execute("DELETE FROM public.tenants WHERE schema_name <> %s", [only])
    db.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN nickname integer").format(sql.Identifier(only, "contact_data_contacts"))
    )
    connection.close()

    result = manage("migrate_schemas", "--noinput", env=later_env())

    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"1 of 1 tenant schemas failed to migrate ({only}:" in result.stderr
    code, line = deploy_check()
    assert code == 1
    assert f"the last migrate_schemas failed in 1 tenant schema(s): {only}" in line, line


def test_schemas_a_killed_deploy_left_behind_fail_the_check_until_migrate_schemas_runs(
    migrated: dict[str, Any],
) -> None:
    """A deploy killed after one schema records nothing: the schemas' own migration records tell."""
    tenants = [f"tenant_{t}" for t in migrated["tenants"] if not t.startswith("empty")]
    done, *left = tenants
    assert manage("migrate_schemas", "--schema", done, "--noinput", env=later_env()).returncode == 0

    behind = manage("migrate_phase", "status", "--format", "json", env=later_env())
    assert behind.returncode == 0, behind.stderr
    document = json.loads(behind.stdout)
    assert document["schemas_behind"][0] == "public"
    assert set(left) <= set(document["schemas_behind"])
    assert done not in document["schemas_behind"]
    assert document["complete"] is False
    assert document["deploy_check"]["safe"] is True  # a deploy is what mends it
    assert "lack migrations of this release" in document["deploy_check"]["reason"]
    text = manage("migrate_phase", "status", env=later_env()).stdout
    assert f"BEHIND {left[0]}" in text

    assert manage("migrate_schemas", "--noinput", env=later_env()).returncode == 0
    after = json.loads(manage("migrate_phase", "status", "--format", "json", env=later_env()).stdout)
    assert after["schemas_behind"] == []
    assert json.loads(manage("migrate_phase", "status", "--format", "json").stdout)["schemas_behind"] == []


def test_a_tenant_registered_as_new_over_a_schema_with_legacy_rows_fails_the_check(migrated: dict[str, Any]) -> None:
    """The old application made a tenant schema after phase 1 and the new one registered it its own way (a
    NEW tenant): no phase migrates a NEW tenant, so its legacy rows stayed behind under a green check."""
    from tenants.models import MigrationState, Tenant

    for phase in ("security", "verify", "cutover"):
        run("migrate_phase", phase, interactive=False)
    assert manage_here("migrate_phase", "status", "--check").returncode == 0
    db.execute("CREATE SCHEMA tenant_foo_0009")
    db.execute("CREATE TABLE tenant_foo_0009.contacts (id bigint PRIMARY KEY, first_name text)")
    db.execute("INSERT INTO tenant_foo_0009.contacts VALUES (1, 'Left behind')")
    Tenant(tenant_id="foo_0009", name="Foo", migration_state=MigrationState.NEW).save()
    run("migrate_schemas", "--schema", "tenant_foo_0009")  # the deploy: its schema gets this release's tables

    checked = manage_here("migrate_phase", "status", "--check")
    assert checked.returncode == 1
    assert "NOT MIGRATED tenant_foo_0009" in checked.stdout
    listed = json.loads(manage_here("migrate_phase", "status", "--format", "json").stdout)
    assert listed["new_tenants_with_legacy_tables"] == ["tenant_foo_0009"]
