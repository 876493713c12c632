"""The constraint and verify catalog lookups are keyed by schema too (see test_catalog_lookups.py): a join of
pg_class to pg_namespace on the schema's name read every relation of the database (pg_class has no
index on its namespace: 5-70 ms per call at 1,000 tenants, 51,000 relations; ten times that at 10,000)."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from migrator.ops import constraints, verification
from tests.migrator.scale.support import catalog_lookups, crowd_the_catalog, reading_too_many_rows


def test_missing_constraints_and_table_problems_read_a_few_catalog_rows(seeded: dict[str, Any]) -> None:
    schema = "tenant_" + seeded["tenants"][0]
    crowd_the_catalog()
    with CaptureQueriesContext(connection) as captured:
        assert constraints.missing_constraints(schema, "activities") == []
        assert list(verification.missing_tenant_tables([schema])) == [schema]
    lookups = catalog_lookups(captured)
    assert len(lookups) >= 2, lookups
    unkeyed = reading_too_many_rows(lookups)
    assert not unkeyed, "\n".join(unkeyed)
