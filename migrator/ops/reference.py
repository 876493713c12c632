"""Merging per-tenant reference tables into one shared table, with an old id -> new id map.

Rows are matched on the reference table's key (``code`` or ``name``). Two tenants with the same
key but different other values are a conflict: the merge refuses, listing them, unless the
operator chose ``first-wins`` (the shared row, else the first tenant by id, wins; the discarded
variants are returned for the tracking row). Merged rows and map entries commit together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Q
from psycopg import sql

from migrator import catalog, db
from migrator.core.errors import MigrationError
from migrator.models import MigrationRecord, Status
from migrator.ops.target_columns import Fill, column_fill, refuse_unmapped_legacy_columns
from migrator.step_ref import StepRef
from migrator.tables import ReferenceTable
from salesflow.layout import tenant_schema_name

STAGE = sql.Identifier("reference_stage")
SHARED_TENANT = "(shared)"


@dataclass
class MergeResult:
    tenants_merged: list[str] = field(default_factory=list)
    tenants_without_table: list[str] = field(default_factory=list)
    rows_staged: int = 0
    rows_added: int = 0
    mapped: int = 0
    discarded: list[dict[str, Any]] = field(default_factory=list)


def _value_columns(
    ref: ReferenceTable, tenant_ids: list[str], schema_catalog: catalog.SchemaCatalog
) -> tuple[list[str], list[Fill]]:
    """Columns besides id of the shared table (as the catalog has it) that the tenants' tables have, and
    those none has that an insert must fill (see ops/target_columns.py); an extra legacy column, or a
    column only some tenants' tables have, blocks the merge."""
    shared = (ref.shared_schema, ref.table)
    target = [c for c in catalog.columns(*shared) if c.name != "id"]
    legacy: dict[str, set[str]] = {}
    for tenant_id in tenant_ids:
        source = (tenant_schema_name(tenant_id), ref.legacy_table)
        refuse_unmapped_legacy_columns(source, shared, "merged", schema_catalog)
        legacy[tenant_id] = {c.name for c in schema_catalog.columns(*source)}
    value_cols: list[str] = []
    fills: list[Fill] = []
    for column in target:
        having = [t for t in tenant_ids if column.name in legacy[t]]
        if len(having) == len(tenant_ids):
            value_cols.append(column.name)
        elif having:
            lacking = [t for t in tenant_ids if column.name not in legacy[t]]
            raise MigrationError(
                f"{'.'.join(shared)}.{column.name}: the legacy {ref.legacy_table} tables of {len(lacking)} tenant(s) "
                f"lack the column ({', '.join(tenant_schema_name(t) for t in lacking[:5])}) and others have it; "
                "nothing was merged: add the column to those legacy tables (or drop it from the others) deliberately"
            )
        elif not column.has_default:
            fill = column_fill((tenant_schema_name(tenant_ids[0]), ref.legacy_table), shared, ref.model, column)
            if fill is not None:
                fills.append(fill)
    return value_cols, fills


def _conflicts(ref: ReferenceTable, value_cols: list[str]) -> list[dict[str, Any]]:
    values = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in value_cols if c != ref.merge_key))
    variants = sql.SQL(
        "WITH candidates AS ("
        "  SELECT tenant_id, {key} AS key, {values}::text AS variant FROM {stage}"
        "  UNION ALL SELECT %s, {key}, {values}::text FROM {shared}"
        "), keyed AS (SELECT key FROM candidates GROUP BY key HAVING count(DISTINCT variant) > 1) "
        "SELECT c.key, c.variant, array_agg(c.tenant_id ORDER BY c.tenant_id = %s DESC, c.tenant_id) "
        "FROM candidates c JOIN keyed USING (key) GROUP BY c.key, c.variant ORDER BY c.key, min(c.tenant_id)"
    ).format(
        key=sql.Identifier(ref.merge_key),
        values=values,
        stage=STAGE,
        shared=sql.Identifier(ref.shared_schema, ref.table),
    )
    conflicts: dict[str, dict[str, Any]] = {}
    for key, variant, tenants in db.fetchall(variants, [SHARED_TENANT, SHARED_TENANT]):
        conflicts.setdefault(key, {"key": key, "variants": []})["variants"].append(
            {"value": variant, "tenants": tenants}
        )
    return list(conflicts.values())


def describe_conflicts(ref: ReferenceTable, conflicts: list[dict[str, Any]], limit: int = 5) -> str:
    parts = []
    for conflict in conflicts[:limit]:
        variants = " vs ".join(f"{v['value']} in {', '.join(v['tenants'][:3])}" for v in conflict["variants"])
        parts.append(f"{ref.merge_key} {conflict['key']!r}: {variants}")
    more = f" (+{len(conflicts) - limit} more)" if len(conflicts) > limit else ""
    return "; ".join(parts) + more


def _unmapped_rows(ref: ReferenceTable, tenant_id: str, partitioned: bool | None = None) -> sql.Composed:
    """The tenant's legacy ``ref`` rows (its own: see :func:`catalog.own_rows`) that have no map entry
    yet, aliased ``l``. ``partitioned``: whether the legacy table is, when the caller knows.

    Parameters: :func:`_unmapped_params`.
    """
    return sql.SQL(
        "{legacy} l WHERE NOT EXISTS (SELECT 1 FROM public.migrator_reference_map m "
        "WHERE m.tenant_id = %s AND m.reference_table = %s AND m.old_id = l.id)"
    ).format(legacy=catalog.own_rows(tenant_schema_name(tenant_id), ref.legacy_table, partitioned))


def _unmapped_params(ref: ReferenceTable, tenant_id: str) -> list[str]:
    return [tenant_id, ref.map_name]


def _unmerged_tenants(
    ref: ReferenceTable, tenant_ids: list[str], schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ
) -> tuple[list[str], list[str]]:
    """Tenants with legacy ``ref`` rows that have no map entry yet, and tenants that have no such table.

    Row by row, not tenant by tenant: a reference row added to a tenant merged before is merged too.
    """
    schemas = [tenant_schema_name(t) for t in tenant_ids]
    present = schema_catalog.partitioned_by_schema(schemas, ref.legacy_table)
    todo: list[str] = []
    without_table: list[str] = []
    for tenant_id, schema in zip(tenant_ids, schemas, strict=True):
        if schema not in present:
            without_table.append(tenant_id)
        elif db.fetchvalue(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(_unmapped_rows(ref, tenant_id, present[schema])),
            _unmapped_params(ref, tenant_id),
        ):
            todo.append(tenant_id)
    return todo, without_table


def needs_merge(ref: ReferenceTable, tenant_ids: list[str]) -> bool:
    """Some of these tenants have legacy ``ref`` rows that were never merged.

    (A tenant registered, or a row added, after the merge.)
    """
    return bool(_unmerged_tenants(ref, tenant_ids)[0])


# Tenants whose legacy rows are staged per transaction: reading a tenant's table locks it until the
# commit, and thousands of tenants in one transaction would not fit the server's lock table.
TENANTS_PER_STAGING_TRANSACTION = 100


def merge_reference_table(
    ref: ReferenceTable, tenant_ids: list[str], policy: str, schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ
) -> MergeResult:
    """Merge the rows of ``ref`` of the given tenants that have no map entry yet into its shared table
    (``schema_catalog``: a tenant schema's tables as read for its steps, when one tenant's rows are merged).

    The tenants' rows are staged first, a hundred tenants per transaction, into a temporary table of
    this session; the conflict check, the new shared rows and every map entry then commit together
    in one transaction that reads only the staged rows. A row a tenant adds after its rows were
    staged has no map entry, and is merged by the tenant's copy (see ``needs_merge``).
    """
    if not catalog.table_exists(str(ref.shared_schema), ref.table):
        raise MigrationError(f"{ref.shared_schema}.{ref.table} does not exist; run `migrate_phase schemas` first")
    result = MergeResult()
    # Nothing to merge (the usual case when a tenant's captured changes are applied): no lock, which
    # the caller would otherwise hold until it commits (an online cutover holds it through its whole
    # switch, and the other tenants' switches queued on it).
    todo, result.tenants_without_table = _unmerged_tenants(ref, tenant_ids, schema_catalog)
    if not todo:
        return result
    # One merge of a reference table at a time (tenant copies merge their new rows in parallel): a
    # conflict check must see every shared row that another merge could be adding.
    lock_key = [f"migrator reference merge {ref.map_name}"]
    db.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", lock_key)
    try:
        todo, result.tenants_without_table = _unmerged_tenants(ref, tenant_ids, schema_catalog)
        if todo:
            _merge_staged(ref, todo, policy, result, schema_catalog)
            result.tenants_merged = todo
    finally:
        db.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(STAGE))
        db.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", lock_key)
    return result


def _merge_staged(
    ref: ReferenceTable, todo: list[str], policy: str, result: MergeResult, schema_catalog: catalog.SchemaCatalog
) -> None:
    shared = sql.Identifier(ref.shared_schema, ref.table)
    value_cols, fills = _value_columns(ref, todo, schema_catalog)
    cols = db.ident_list(value_cols)
    db.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(STAGE))
    db.execute(
        sql.SQL(
            "CREATE TEMP TABLE {stage} AS SELECT ''::text AS tenant_id, 0::bigint AS old_id, {cols} FROM {shared} "
            "WITH NO DATA"
        ).format(stage=STAGE, cols=cols, shared=shared)
    )
    legacy_cols = sql.SQL(", ").join(sql.SQL("l.{}").format(sql.Identifier(c)) for c in value_cols)
    for start in range(0, len(todo), TENANTS_PER_STAGING_TRANSACTION):
        with transaction.atomic():
            for tenant_id in todo[start : start + TENANTS_PER_STAGING_TRANSACTION]:
                partitioned = schema_catalog.is_partitioned(tenant_schema_name(tenant_id), ref.legacy_table)
                result.rows_staged += db.execute(
                    sql.SQL("INSERT INTO {stage} SELECT %s, l.id, {legacy_cols} FROM {unmapped}").format(
                        stage=STAGE, legacy_cols=legacy_cols, unmapped=_unmapped_rows(ref, tenant_id, partitioned)
                    ),
                    [tenant_id, *_unmapped_params(ref, tenant_id)],
                )
    with transaction.atomic():
        conflicts = _conflicts(ref, value_cols)
        if conflicts and policy != "first-wins":
            raise MigrationError(
                f"{len(conflicts)} conflicting {ref.legacy_table} across tenants (same {ref.merge_key}, different "
                "values): "
                f"{describe_conflicts(ref, conflicts)}; fix the legacy data or pass --reference-conflicts=first-wins"
            )
        for conflict in conflicts:
            for variant in conflict["variants"][1:]:
                result.discarded.append({"key": conflict["key"], "kept": conflict["variants"][0]["value"], **variant})
        result.rows_added = db.execute(
            sql.SQL(
                "INSERT INTO {shared} ({insert_cols}) SELECT DISTINCT ON ({key}) {values} FROM {stage} "
                "ORDER BY {key}, tenant_id, old_id ON CONFLICT ({key}) DO NOTHING"
            ).format(
                shared=shared,
                insert_cols=db.ident_list([*value_cols, *(f.column for f in fills)]),
                values=sql.SQL(", ").join([*map(sql.Identifier, value_cols), *(f.value() for f in fills)]),
                key=sql.Identifier(ref.merge_key),
                stage=STAGE,
            )
        )
        result.mapped = db.execute(
            sql.SQL(
                "INSERT INTO public.migrator_reference_map (tenant_id, reference_table, old_id, new_id) "
                "SELECT s.tenant_id, %s, s.old_id, t.id FROM {stage} s JOIN {shared} t USING ({key})"
            ).format(stage=STAGE, shared=shared, key=sql.Identifier(ref.merge_key)),
            [ref.map_name],
        )
        if result.mapped != result.rows_staged:
            raise MigrationError(
                f"{ref.legacy_table}: mapped {result.mapped} of {result.rows_staged} rows; nothing was merged"
            )


def unmapped_counts(
    refs: list[ReferenceTable], tenant_id: str, schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ
) -> dict[str, int]:
    """:func:`unmapped_count` of each of ``refs`` for one tenant, in one query: legacy table -> rows."""
    schema = tenant_schema_name(tenant_id)
    present = schema_catalog.tables_of(schema)
    counted = [ref for ref in refs if ref.legacy_table in present]
    if not counted:
        return {ref.legacy_table: 0 for ref in refs}
    row = db.fetchone(
        sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL(
                    "(SELECT count(*) FROM {legacy} l WHERE NOT EXISTS (SELECT 1 FROM public.migrator_reference_map m "
                    "WHERE m.tenant_id = %s AND m.reference_table = %s AND m.old_id = l.id))"
                ).format(legacy=schema_catalog.own_rows(schema, ref.legacy_table))
                for ref in counted
            )
        ),
        [value for ref in counted for value in (tenant_id, ref.map_name)],
    )
    found = dict(zip([ref.legacy_table for ref in counted], row or (), strict=True))
    return {ref.legacy_table: int(found.get(ref.legacy_table, 0)) for ref in refs}


def discarded_keys(merges: tuple[StepRef, ...], tenant_id: str) -> frozenset[str]:
    """Keys of the tenant's reference rows whose variant a first-wins merge discarded, as the completed
    attempts of the ``merges`` steps (phase-wide, or the tenant's) recorded them: every attempt, since a
    rerun of a merge (for a tenant registered since) records only what it discarded itself."""
    records = MigrationRecord.objects.of(*merges).filter(status=Status.COMPLETED)
    keys: set[str] = set()
    for details in records.filter(Q(tenant_id=tenant_id) | Q(tenant_id=None)).values_list("details", flat=True):
        for variant in (details or {}).get("discarded_variants") or []:
            if tenant_id in (variant.get("tenants") or []):
                keys.add(str(variant.get("key")))
    return frozenset(keys)


def changed_counts(
    refs: list[ReferenceTable],
    tenant_id: str,
    schema_catalog: catalog.SchemaCatalog,
    excused_keys: frozenset[str] = frozenset(),
) -> dict[str, int]:
    """Legacy reference rows of one tenant whose values differ from the shared row the merge mapped them
    to (an edit since the merge, which an archive would hide), in one query: legacy table -> rows. The
    values compared are the merge's own (the shared table's columns the legacy table has, as text); a key
    in ``excused_keys`` is one whose variant a first-wins merge discarded on purpose."""
    schema = tenant_schema_name(tenant_id)
    present = schema_catalog.tables_of(schema)
    counted = [ref for ref in refs if ref.legacy_table in present]
    if not counted:
        return {ref.legacy_table: 0 for ref in refs}
    queries: list[sql.Composable] = []
    params: list[object] = []
    for ref in counted:
        legacy_columns = {c.name for c in schema_catalog.columns(schema, ref.legacy_table)}
        shared = [c for c in catalog.columns(ref.shared_schema, ref.table) if c.name != "id"]
        compared = [c for c in shared if c.name in legacy_columns]
        # The legacy values as the merge stored them: cast to the shared column's type (a char(n)'s padding,
        # a float4, a timestamp without time zone would otherwise differ as text on every row).
        legacy_row = sql.SQL("ROW({})::text").format(
            sql.SQL(", ").join(
                sql.SQL("CAST({} AS {})").format(sql.Identifier("l", c.name), sql.SQL(c.data_type)) for c in compared
            )
        )
        shared_row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier("s", c.name) for c in compared))

        queries.append(
            sql.SQL(
                "(SELECT count(*) FROM {legacy} l JOIN public.migrator_reference_map m ON m.tenant_id = %s "
                "AND m.reference_table = %s AND m.old_id = l.id JOIN {shared} s ON s.id = m.new_id "
                "WHERE {legacy_row} IS DISTINCT FROM {shared_row} AND NOT l.{key}::text = ANY(%s))"
            ).format(
                legacy=schema_catalog.own_rows(schema, ref.legacy_table),
                shared=sql.Identifier(ref.shared_schema, ref.table),
                legacy_row=legacy_row,
                shared_row=shared_row,
                key=sql.Identifier(ref.merge_key),
            )
        )
        params += [tenant_id, ref.map_name, sorted(excused_keys)]
    found = db.fetchone(sql.SQL("SELECT {}").format(sql.SQL(", ").join(queries)), params) or ()
    changed = dict(zip([ref.legacy_table for ref in counted], found, strict=True))
    return {ref.legacy_table: int(changed.get(ref.legacy_table, 0)) for ref in refs}


def unmapped_count(ref: ReferenceTable, tenant_ids: list[str]) -> int:
    """Legacy reference rows of these tenants with no map entry (0 after a good merge)."""
    schemas = [tenant_schema_name(t) for t in tenant_ids]
    present = catalog.partitioned_by_schema(schemas, ref.legacy_table)
    missing = 0
    for tenant_id, schema in zip(tenant_ids, schemas, strict=True):
        if schema not in present:
            continue
        missing += int(
            db.fetchvalue(
                sql.SQL(
                    "SELECT count(*) FROM {legacy} l WHERE NOT EXISTS (SELECT 1 FROM public.migrator_reference_map m "
                    "WHERE m.tenant_id = %s AND m.reference_table = %s AND m.old_id = l.id)"
                ).format(legacy=catalog.own_rows(schema, ref.legacy_table, present[schema])),
                [tenant_id, ref.map_name],
            )
        )
    return missing
