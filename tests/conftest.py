"""Shared fixtures: legacy data built by ``seed_legacy`` in the real test database, and cleanup.

Phase tests are transactional (``transaction=True``): the migrator commits batch by batch and runs
tenants on several connections, which a test wrapped in one transaction could not see. Whatever
such a test creates outside Django's flush (schemas, roles) is dropped by ``reset_database``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

from migrator import catalog, db
from migrator.django_migrations import migrate_schema
from migrator.devtools.reset import reset_database
from migrator.config import get_config
from migrator.tables import service_tables



@pytest.fixture(autouse=True)
def migrator_settings(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Backups in a temporary folder; service roles with a prefix of this test run (roles are cluster-wide)."""
    settings.SALESFLOW = {
        **settings.SALESFLOW,
        "BACKUP_DIR": tmp_path_factory.mktemp("backups"),
        "ROLE_PREFIX": f"sftest{os.getpid()}",
    }


def restore_clean_database() -> None:
    """Drop every schema and role tests made; rebuild service schemas a rollback may have dropped."""
    reset_database(get_config())
    if not all(catalog.schema_exists(schema) for schema in service_tables()):
        migrate_schema("public")


@pytest.fixture
def clean_db(transactional_db: None) -> Iterator[None]:
    restore_clean_database()
    yield
    restore_clean_database()


def run(command: str, *args: str, **options: Any) -> str:
    """``call_command`` returning what the command printed."""
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


@pytest.fixture
def seeded(clean_db: None) -> dict[str, Any]:
    """Three tenants (2 with data, 1 empty) of legacy data."""
    run("seed_legacy", tenants=2, contacts=120, activities=240, empty_tenants=1, seed=7)
    return {"tenants": ["acme_0001", "globex_0002", "empty_0001"], "contacts": 120, "activities": 240}


def table_fingerprint(schema: str, table: str) -> tuple[int, str]:
    """Row count and an md5 over all rows in id order (test helper, small tables only)."""
    from psycopg import sql

    return db.fetchone(sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t")
                       .format(sql.Identifier(schema, table)))  # type: ignore[return-value]


def legacy_fingerprints(tenants: list[str]) -> dict[str, tuple[int, str]]:
    from migrator.tables import LEGACY_AUTH_TABLES, LEGACY_TENANT_TABLES

    config = get_config()
    prints = {f"{config.legacy_auth_schema}.{t}": table_fingerprint(config.legacy_auth_schema, t) for t in LEGACY_AUTH_TABLES}
    for tenant in tenants:
        for table in LEGACY_TENANT_TABLES:
            if catalog.table_exists(f"tenant_{tenant}", table):
                prints[f"tenant_{tenant}.{table}"] = table_fingerprint(f"tenant_{tenant}", table)
    return prints


__all__ = ["run", "table_fingerprint", "legacy_fingerprints", "connection"]
