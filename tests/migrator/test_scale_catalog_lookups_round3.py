"""This round's catalog lookups are keyed by schema too (see test_scale_catalog_lookups.py): cutover
asks every tenant whether its legacy names are compatibility views, and a join of pg_class to
pg_namespace on the schema's name read every relation of the database (pg_class has no index on
its namespace: 5-70 ms per call at 1,000 tenants, 51,000 relations; ten times that at 10,000)."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from migrator.ops import compat, constraints, verification
from tests.migrator.test_scale_catalog_lookups import CATALOGS, MOST_ROWS_PER_NODE, crowd_the_catalog, rows_read


def test_compat_views_and_missing_constraints_read_a_few_catalog_rows(seeded: dict[str, Any]) -> None:
    schema = "tenant_" + seeded["tenants"][0]
    crowd_the_catalog()
    with CaptureQueriesContext(connection) as captured:
        assert compat.compat_views(schema) == []
        assert constraints.missing_constraints(schema, "activities") == []
        verification.tenant_table_problems(schema)
    lookups = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].lstrip().upper().startswith("SELECT") and any(name in q["sql"] for name in CATALOGS)
    ]
    assert len(lookups) >= 3, lookups
    unkeyed = [
        f"{node} read {rows} rows: {query}"
        for query in lookups
        for node, rows in rows_read(query)
        if rows > MOST_ROWS_PER_NODE
    ]
    assert not unkeyed, "\n".join(unkeyed)
