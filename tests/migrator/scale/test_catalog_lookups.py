"""Catalog lookups of one table stay keyed by schema when every tenant schema has a table of that name.

On a database whose catalog statistics predate its tenant schemas, a lookup that joins pg_class to
pg_namespace and filters on both names can be planned from ``relname`` alone: it then walks the
same table in every tenant schema, once per tenant table (quadratic in the tenant count). The
assertion is on the plan's actual row counts, not on time: a keyed lookup reads a handful of
catalog rows whatever the number of schemas.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from migrator import catalog
from migrator.ops import archive, constraints
from migrator.ops.copy import analyze, mapping_proven
from migrator.ops.load_test import LEGACY, tenants_with_tables
from migrator.ops.table_copy import Remap, TableCopy
from tests.migrator.scale.support import catalog_lookups, crowd_the_catalog, reading_too_many_rows


def test_one_table_lookups_read_a_few_catalog_rows_however_many_schemas_share_its_name(
    seeded: dict[str, Any],
) -> None:
    schema = "tenant_" + seeded["tenants"][0]
    crowd_the_catalog()
    copy = TableCopy(schema, "activities", schema, "activities", ("id",))
    with CaptureQueriesContext(connection) as captured:
        catalog.table_exists(schema, "activities")
        catalog.columns(schema, "activities")
        catalog.tables_by_schema([schema, "crowd_1"])
        assert catalog.schemas_with_table([schema, "crowd_1", "no_such_schema"], "activity_types") == {
            schema,
            "crowd_1",
        }
        mapping_proven(copy, Remap("activity_type_id", seeded["tenants"][0], "activity_types"))
        constraints.unvalidated_foreign_keys(schema, "activities")
        archive.drop_schema_if_empty("crowd_1")
        tenants_with_tables([schema, "crowd_1"], LEGACY)
        with transaction.atomic():
            analyze(schema, "activities")
            # contacts first: the activities' foreign key still depends on its primary key
            constraints.defer_constraints(schema, "contacts")
            constraints.defer_constraints(schema, "activities")
            archive.ensure_archive_schema("crowd_archive")
            archive.archive_tables(schema, seeded["tenants"][0], ["contacts"], "crowd_archive", drop=False)
            transaction.set_rollback(True)
    lookups = catalog_lookups(captured)
    assert len(lookups) >= 10, lookups
    unkeyed = reading_too_many_rows(lookups)
    assert not unkeyed, "\n".join(unkeyed)
