"""Tenant-count scale: phase 2 replays a template's DDL into many tenant schemas per transaction, and
``migrate_schemas`` (the behind-only executor) migrates only the schemas that are behind, in parallel.

The schemas built the fast way must be exactly what ``migrate_schemas`` builds, and stay so after a
later tenant migration.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

from django.db import connection
from psycopg import sql

from migrator import catalog, db
from migrator.ops import binaries
from migrator.tables import tenant_table_names
from tests.helpers import run
from tests.migrator.helpers import database_url, manage, manage_env, rows, value

NEW_TABLES = (*tenant_table_names(), "django_migrations")
LATER_SETTINGS = "tests.migrator.later_migration_settings"


def later_env() -> dict[str, str]:
    """``manage.py`` with the later tenant migration (manage_env drops DJANGO_SETTINGS_MODULE)."""
    return {**manage_env(), "DJANGO_SETTINGS_MODULE": LATER_SETTINGS}


def schema_of(tenant_id: str) -> str:
    return f"tenant_{tenant_id}"


def schema_dump(schema: str) -> str:
    """``pg_dump --schema-only`` of one schema with its name replaced, so two schemas compare."""
    pg_dump = binaries.find_binary("pg_dump", catalog.server_version_num() // 10000)
    dump = subprocess.run(
        [str(pg_dump), "--schema-only", "--no-owner", "--schema", schema, database_url()],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in dump.splitlines() if line and not line.startswith("--")]
    # pg_dump 15+ writes a random \restrict key; it differs per run and says nothing about the schema.
    lines = [line for line in lines if not line.startswith(("\\restrict", "\\unrestrict"))]
    return re.sub(rf"\b{re.escape(schema)}\b", "<schema>", "\n".join(lines))


def recorded_migrations(schema: str) -> list[tuple[Any, ...]]:
    return rows(sql.SQL("SELECT app, name FROM {} ORDER BY id").format(sql.Identifier(schema, "django_migrations")))


def rebuild_with_migrate_schemas(schema: str) -> None:
    """What the tenant migrations build, the way django-tenants' standard executor runs them."""
    db.execute(
        sql.SQL("DROP TABLE {} CASCADE").format(sql.SQL(", ").join(sql.Identifier(schema, t) for t in NEW_TABLES))
    )
    result = manage("migrate_schemas", "--executor", "standard", "--schema", schema, "--noinput")
    assert result.returncode == 0, result.stdout + result.stderr


def test_phase_2_builds_several_tenants_per_transaction_exactly_as_migrate_schemas(prepared: dict[str, Any]) -> None:
    tenants = prepared["tenants"]
    run("migrate_phase", "schemas", interactive=False)

    # One transaction built every tenant's tables (the batch), not one per tenant.
    transactions = value(
        "SELECT count(DISTINCT c.xmin::text) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relname = 'contact_data_contacts'",
        [[schema_of(t) for t in tenants]],
    )
    assert transactions == 1
    assert not catalog.schema_exists("migrator_tenant_template")  # the template is dropped after use
    statuses = rows(
        "SELECT tenant_id, status FROM schema_migrations WHERE phase = 'schemas' AND step = 'tenant_tables' "
        "ORDER BY tenant_id"
    )
    assert statuses == [(t, "COMPLETED") for t in sorted(tenants)]

    fast, slow = schema_of(tenants[0]), schema_of(tenants[1])
    rebuild_with_migrate_schemas(slow)
    assert schema_dump(fast) == schema_dump(slow)
    assert recorded_migrations(fast) == recorded_migrations(slow)
    assert len(recorded_migrations(fast)) > 10

    # A tenant migration released later applies cleanly to both, and they stay identical.
    later = manage("migrate_schemas", "--noinput", env=later_env())
    assert later.returncode == 0, later.stdout + later.stderr
    for schema in (fast, slow):
        assert "nickname" in {c.name for c in catalog.columns(schema, "contact_data_contacts")}
    assert schema_dump(fast) == schema_dump(slow)
    assert recorded_migrations(fast) == recorded_migrations(slow)
    assert recorded_migrations(fast)[-1] == ("contact_data", "0002_contact_nickname")


def test_a_rerun_after_a_batch_committed_but_was_not_recorded_completes_it(prepared: dict[str, Any]) -> None:
    """A run killed between a batch's commit and its tracking rows: the rerun finds the tables there and
    records the steps as done, without building anything twice."""
    tenants = prepared["tenants"]
    run("migrate_phase", "schemas", interactive=False)
    db.execute("UPDATE schema_migrations SET status = 'RUNNING' WHERE phase = 'schemas' AND step = 'tenant_tables'")
    run("migrate_phase", "schemas", interactive=False)
    latest = rows(
        "SELECT DISTINCT ON (tenant_id) tenant_id, status, details->>'message' FROM schema_migrations "
        "WHERE phase = 'schemas' AND step = 'tenant_tables' ORDER BY tenant_id, attempt DESC"
    )
    assert latest == [(t, "COMPLETED", "already up to date") for t in sorted(tenants)]


def test_migrate_schemas_with_nothing_to_apply_runs_migrate_in_no_tenant_schema(schemas_ready: dict[str, Any]) -> None:
    result = manage("migrate_schemas", "--noinput")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 of 3 tenant schemas have migrations to apply" in result.stdout
    assert not [line for line in result.stdout.splitlines() if ":tenant_" in line], result.stdout


def test_migrate_schemas_applies_to_the_schemas_behind_in_parallel_and_reports_each_failure(
    schemas_ready: dict[str, Any],
) -> None:
    tenants = schemas_ready["tenants"]
    broken, *others = [schema_of(t) for t in tenants]
    # The later migration's column already exists there: its ALTER TABLE fails in that schema only.
    db.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN nickname integer").format(sql.Identifier(broken, "contact_data_contacts"))
    )
    connection.close()

    result = manage("migrate_schemas", "--noinput", env=later_env())

    assert result.returncode != 0
    assert f"1 of 3 tenant schemas failed to migrate ({broken}: " in result.stderr, result.stderr
    assert "3 of 3 tenant schemas have migrations to apply" in result.stdout
    for schema in others:
        assert recorded_migrations(schema)[-1] == ("contact_data", "0002_contact_nickname")
    assert ("contact_data", "0002_contact_nickname") not in recorded_migrations(broken)

    # Once fixed, a rerun migrates just the schema still behind.
    db.execute(sql.SQL("ALTER TABLE {} DROP COLUMN nickname").format(sql.Identifier(broken, "contact_data_contacts")))
    again = manage("migrate_schemas", "--noinput", env=later_env())
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 of 3 tenant schemas have migrations to apply" in again.stdout
    assert recorded_migrations(broken)[-1] == ("contact_data", "0002_contact_nickname")
