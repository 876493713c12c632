"""A tenant's phase-3 steps (copies, validations, the online sync's start) ask about its tables from one
read of the schema's tables and columns, made once per tenant: none of its data tables is looked up on
its own (with thousands of tenants, a lookup per table and question was most of a small tenant's time).
The auth tables' steps, and each round of an online sync, read their schemas once too."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from migrator.config import get_config
from migrator.tables import LEGACY_AUTH_TABLES, TENANT_DATA_TABLES, TableKind, legacy_table
from tests.helpers import run

SCHEMA_READ = "LEFT JOIN pg_attribute a ON a.attrelid = c.oid"
# catalog.columns, catalog.table_exists and catalog.is_partitioned of one table
ONE_TABLE = ("FROM pg_attribute a WHERE a.attrelid = to_regclass", "FROM pg_class c WHERE c.oid = to_regclass")


@pytest.mark.parametrize("mode", [(), ("--online",)], ids=["offline", "online"])
def test_a_tenants_data_steps_read_its_schema_once(schemas_ready: dict[str, Any], mode: tuple[str, ...]) -> None:
    tenants = schemas_ready["tenants"]
    tables = {name for spec in TENANT_DATA_TABLES for name in (spec.legacy_table, spec.target_table)}

    with CaptureQueriesContext(connection) as captured:
        run("migrate_phase", "data", *mode, interactive=False)

    statements = [query["sql"] for query in captured.captured_queries]
    reads = [s for s in statements if SCHEMA_READ in s and "tenant_" in s]
    assert len(reads) == len(tenants), reads
    for tenant in tenants:
        assert sum(bool(re.search(rf"\btenant_{tenant}\b", s)) for s in reads) == 1, tenant
    one_by_one = [
        s
        for s in statements
        if any(shape in s for shape in ONE_TABLE)
        and "'tenant_" in s
        and any(f"'{table}'::text" in s for table in tables)
    ]
    assert one_by_one == []
    auth_schemas = {get_config().legacy_auth_schema} | {
        str(legacy_table(table, TableKind.AUTH).schema) for table in LEGACY_AUTH_TABLES
    }
    auth_one_by_one = [
        s
        for s in statements
        if any(shape in s for shape in ONE_TABLE)
        and any(f"'{schema}'::text" in s for schema in auth_schemas)
        and any(f"'{table}'::text" in s for table in LEGACY_AUTH_TABLES)
    ]
    assert auth_one_by_one == []
