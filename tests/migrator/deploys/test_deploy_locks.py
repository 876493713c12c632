"""Deploys (``migrate_schemas``) and ``migrate_phase`` never change the schemas at once (tenants/schema_lock.py)."""

from __future__ import annotations

from typing import Any

from django.db import connection
from psycopg import sql

from tenants import schema_lock
from tests.helpers import run
from tests.migrator.helpers import manage, manage_env, psycopg_connect, rows, start_manage

LATER_SETTINGS = "tests.migrator.later_migration_settings"
LATER = ("contact_data", "0002_contact_nickname")


def later_env(**extra: str) -> dict[str, str]:
    return {**manage_env(**extra), "DJANGO_SETTINGS_MODULE": LATER_SETTINGS}


def recorded(schema: str) -> list[tuple[Any, ...]]:
    return rows(sql.SQL("SELECT app, name FROM {} ORDER BY id").format(sql.Identifier(schema, "django_migrations")))


def test_two_deploys_at_once_apply_and_record_each_migration_once(schemas_ready: dict[str, Any]) -> None:
    schemas = [f"tenant_{t}" for t in schemas_ready["tenants"]]
    connection.close()

    first, second = (start_manage("migrate_schemas", "--noinput", env=later_env()) for _ in range(2))
    outputs = [process.communicate(timeout=300) for process in (first, second)]

    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert not any("Traceback" in err for _out, err in outputs), outputs
    for schema in schemas:
        migrations = recorded(schema)
        assert migrations.count(LATER) == 1
        assert len(migrations) == len(set(migrations))


def test_a_deploy_while_a_phase_changes_schemas_waits_then_is_refused_in_one_line(
    schemas_ready: dict[str, Any],
) -> None:
    """The phase holds the lock (here: a session named as a phase holds it); the deploy changes nothing."""
    schemas = [f"tenant_{t}" for t in schemas_ready["tenants"]]
    connection.close()
    holder = psycopg_connect()
    holder.execute("SET application_name = 'salesflow-migrator data on testhost pid 1'")
    assert schema_lock.try_lock(holder)
    try:
        result = manage("migrate_schemas", "--noinput", env=later_env(SALESFLOW_DEPLOY_LOCK_TIMEOUT="1"))
    finally:
        holder.close()

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert "migrate_schemas refused: migrate_phase data on testhost pid 1" in errors[0]
    assert "waiting up to 1 s for migrate_phase data on testhost pid 1" in result.stdout
    for schema in schemas:
        assert LATER not in recorded(schema)

    # Free again: the deploy applies it.
    again = manage("migrate_schemas", "--noinput", env=later_env())
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(recorded(schema).count(LATER) == 1 for schema in schemas)


def test_a_phase_that_changes_schemas_is_refused_in_one_line_while_a_deploy_runs(prepared: dict[str, Any]) -> None:
    """A deploy holds the lock (a session named as one): `schemas` is refused before it changes anything and
    runs once the deploy is over."""
    import pytest
    from django.core.management import CommandError

    from migrator.models import MigrationRecord
    from tests.migrator.helpers import one_line, table_names

    holder = psycopg_connect()
    holder.execute("SET application_name = 'salesflow-deploy migrate_schemas'")
    assert schema_lock.try_lock(holder)
    try:
        with pytest.raises(CommandError) as refused:
            run("migrate_phase", "schemas", interactive=False)
        assert one_line(str(refused.value))
        assert not MigrationRecord.objects.filter(phase="schemas").exists()
        assert "contact_data_contacts" not in table_names("tenant_acme_0001")
    finally:
        holder.close()

    run("migrate_phase", "schemas", interactive=False)
    assert "contact_data_contacts" in table_names("tenant_acme_0001")
