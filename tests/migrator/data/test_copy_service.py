"""The copy services' shortcuts stay exact: the unmapped-reference check with and without a legacy
foreign key to lean on, the quick post-load statistics, and the primary key deferred for the load
only when nothing else depends on it."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from migrator import db
from migrator.core.context import TenantRef
from migrator.core.errors import MigrationError
from migrator.ops import constraints, reference
from migrator.ops.copy import analyze, copy_table, mapping_proven, unmapped_references
from migrator.phases.data import tenant_copy
from migrator.tables import TENANT_DATA_TABLES, reference_table

TENANT = "acme_0001"
SCHEMA = f"tenant_{TENANT}"


@pytest.fixture
def contacts_copy(schemas_ready: dict[str, Any]):
    reference.merge_reference_table(reference_table("contact_types"), schemas_ready["tenants"], "refuse")
    spec = next(t for t in TENANT_DATA_TABLES if t.legacy_table == "contacts")
    return tenant_copy(TenantRef(TENANT), spec)


def forget_mapping_of_a_used_type() -> int:
    """Delete the map entry of the contact type most contacts use; returns how many contacts use it."""
    type_id, used = db.fetchone(
        sql.SQL(
            "SELECT contact_type_id, count(*) FROM {} WHERE contact_type_id IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 "
            "LIMIT 1"
        ).format(sql.Identifier(SCHEMA, "contacts"))
    )
    db.execute(
        "DELETE FROM public.migrator_reference_map WHERE tenant_id = %s AND reference_table = 'contact_types' "
        "AND old_id = %s",
        [TENANT, type_id],
    )
    return used


def drop_legacy_foreign_key() -> None:
    name = db.fetchvalue(
        "SELECT c.conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = %s AND t.relname = 'contacts' "
        "AND c.contype = 'f'",
        [SCHEMA],
    )
    db.execute(
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(SCHEMA, "contacts"), sql.Identifier(name))
    )


def test_a_fully_mapped_column_passes_with_or_without_the_legacy_foreign_key(contacts_copy):
    remap = contacts_copy.remaps[0]
    assert mapping_proven(contacts_copy, remap)  # the legacy FK proves it: no scan of the contacts
    assert unmapped_references(contacts_copy) == {}
    drop_legacy_foreign_key()
    assert not mapping_proven(contacts_copy, remap)  # nothing to lean on: every row is checked
    assert unmapped_references(contacts_copy) == {}


@pytest.mark.parametrize("legacy_foreign_key", [True, False], ids=["legacy-fk", "no-legacy-fk"])
def test_unmapped_reference_ids_block_the_copy_before_any_row_moves(contacts_copy, legacy_foreign_key):
    if not legacy_foreign_key:
        drop_legacy_foreign_key()
    used = forget_mapping_of_a_used_type()
    assert unmapped_references(contacts_copy) == {"contact_type_id": used}
    with pytest.raises(
        MigrationError, match=f"^{used} rows of contacts.contact_type_id point at reference rows with no merged id"
    ):
        copy_table(contacts_copy, 50)
    assert db.fetchvalue(sql.SQL("SELECT count(*) FROM {}").format(contacts_copy.target)) == 0


def test_quick_statistics_cover_every_column_and_the_full_pass_is_available(contacts_copy):
    stats = copy_table(contacts_copy, 50)
    assert stats.rows_copied == stats.rows_source == 120
    schema, table = contacts_copy.target_schema, contacts_copy.target_table
    histogram = (
        "SELECT attname, coalesce(cardinality(histogram_bounds::text::text[]), 0) FROM pg_stats "
        "WHERE schemaname = %s AND tablename = %s"
    )

    analyze(schema, table)
    quick = dict(db.fetchall(histogram, [schema, table]))
    assert set(quick) == set(contacts_copy.columns)
    assert quick["id"] == 11  # statistics target 10: 10 buckets

    analyze(schema, table, statistics_target=None)
    full = dict(db.fetchall(histogram, [schema, table]))
    assert full["id"] == 101  # the server's default target, 100


def primary_key(schema: str, table: str) -> str | None:
    return db.fetchvalue(
        "SELECT c.conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = %s AND t.relname = %s AND c.contype = 'p'",
        [schema, table],
    )


def test_the_primary_key_is_deferred_only_when_no_other_table_depends_on_it(schemas_ready):
    contacts, activities = "contact_data_contacts", "activity_data_activities"
    contacts_key, activities_key = primary_key(SCHEMA, contacts), primary_key(SCHEMA, activities)
    assert contacts_key
    assert activities_key

    # activities: nothing references it, so its key goes with its 3 indexes and 2 foreign keys
    assert constraints.defer_constraints(SCHEMA, activities) == 6
    assert primary_key(SCHEMA, activities) is None
    assert activities_key in constraints.pending_deferred(SCHEMA, activities)
    # contacts: the activities' foreign key to it is gone now, but a view relying on the key keeps it
    db.execute(
        sql.SQL("CREATE VIEW {} AS SELECT id, first_name FROM {} GROUP BY id").format(
            sql.Identifier(SCHEMA, "contact_names"), sql.Identifier(SCHEMA, contacts)
        )
    )
    assert constraints.defer_constraints(SCHEMA, contacts) == 4  # 3 indexes, 1 foreign key
    assert primary_key(SCHEMA, contacts) == contacts_key

    assert constraints.restore_constraints(SCHEMA, contacts) == 4
    assert constraints.restore_constraints(SCHEMA, activities) == 6
    assert primary_key(SCHEMA, activities) == activities_key
    assert not constraints.pending_deferred(SCHEMA, activities)
    assert not constraints.unvalidated_foreign_keys(SCHEMA, activities)


def test_the_primary_key_of_a_referenced_table_stays(schemas_ready):
    contacts = "contact_data_contacts"
    key = primary_key(SCHEMA, contacts)
    assert constraints.defer_constraints(SCHEMA, contacts) == 4  # the activities' foreign key needs the key
    assert primary_key(SCHEMA, contacts) == key
    assert constraints.restore_constraints(SCHEMA, contacts) == 4
