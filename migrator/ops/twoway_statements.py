"""The statements a two-way sync's row triggers run (see :mod:`migrator.ops.twoway`): for the keys a write
touched, first a check for a writer crossing from the other side, then the copy of those rows to the other
side (legacy -> new through phase 3's own remapping, new -> legacy through its inverse), then the delete of
the keys gone."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import sql

from migrator import catalog, db
from migrator.ops import conversions, recopy
from migrator.ops.table_copy import TableCopy, zoned_columns
from migrator.ops.twoway_sql import SYNC_SCHEMA
from migrator.tables import LegacyTable

KEYS = sql.SQL("$1")  # the trigger's jsonb array of written keys, as its statements receive it


def crossed_write_check(copy: TableCopy, other_side: sql.Composable, types: list[str]) -> sql.Composed:
    """The row trigger's first statement: the written keys' rows on ``other_side`` (the table the trigger
    is about to write) checked for a writer that came from there and waits for this one (see
    ``refuse_crossed_write`` in :mod:`migrator.ops.twoway_sql`)."""
    # xmax 0: a row no transaction has locked or deleted since it was written (most rows)
    return sql.SQL("SELECT {fn}(array_agg(t.xmax), {what}) FROM {other} t WHERE {match} AND t.xmax <> '0'::xid").format(
        fn=sql.Identifier(SYNC_SCHEMA, "refuse_crossed_write"),
        what=sql.Literal(f"{copy.source_schema}.{copy.source_table}"),
        other=other_side,
        match=recopy.keys_in("t", copy.key, types, KEYS),
    )


def forward_statements(copy: TableCopy) -> tuple[list[sql.Composed], list[sql.Composed]]:
    """Legacy -> new for the written keys: phase 3's own remapping ``SELECT`` (an upsert), and a delete of
    the keys gone from the legacy table; first, a refusal of rows whose reference id has no shared id."""
    types = recopy.key_types(copy.source_schema, copy.source_table, copy.key, copy.schema_catalog)
    check = crossed_write_check(
        copy, copy.target, recopy.key_types(copy.target_schema, copy.target_table, copy.key, copy.schema_catalog)
    )
    statements = [check]

    def refusal(function: str, count: sql.Composable, what: str) -> sql.Composed:
        """``function(count over the written rows, what)``: it raises when the count is not 0."""
        return sql.SQL("SELECT {fn}({count}, {what}) FROM {src} WHERE {match}").format(
            fn=sql.Identifier(SYNC_SCHEMA, function),
            count=count,
            what=sql.Literal(what),
            src=copy.from_clause(),
            match=recopy.keys_in("s", copy.key, types, KEYS),
        )

    source = f"{copy.source_schema}.{copy.source_table}"
    if copy.remaps:
        unmapped = sql.SQL(" + ").join(copy.unmapped_counts())
        statements.append(refusal("refuse_unmapped", sql.SQL("({})::bigint").format(unmapped), source))
    if found := conversions.inexact_condition(copy):
        # What phase 1 refuses in the rows there were, the sync refuses in a row written since: the new
        # table would hold it rounded, cut or rewritten, and the sides would differ until cutover refuses.
        inexact, columns = found
        converted = ", ".join(f"{d.column} {d.legacy_type} -> {d.target_type}" for d in columns)
        count = sql.SQL("count(*) FILTER (WHERE {})").format(inexact)
        statements.append(refusal("refuse_inexact", count, f"{source} ({converted})"))
    upsert, delete = recopy.copy_statements(copy, KEYS)
    # a delete runs only the deleting statements: it is checked for a crossing writer too
    return [*statements, upsert], [check, delete]


@dataclass(frozen=True)
class ReverseReference:
    """A remapped column's reference table, for the new -> legacy direction."""

    column: str
    legacy: LegacyTable


@dataclass(frozen=True)
class LegacyChild:
    """A legacy table of the same scope whose foreign key references the synced legacy table."""

    copy: TableCopy  # the child's own legacy -> new copy
    columns: tuple[str, ...]  # its referencing columns
    referenced: tuple[str, ...]  # the parent's referenced columns


def legacy_children(copy: TableCopy, copies: Iterable[TableCopy]) -> list[LegacyChild]:
    """The synced legacy tables whose foreign keys reference ``copy``'s legacy table."""
    by_table = {c.source_table: c for c in copies if c.source_schema == copy.source_schema}
    rows = db.fetchall(
        sql.SQL(
            "SELECT c.conrelid::regclass::text, cl.relname, "
            "ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i) "
            "      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i), "
            "ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i) "
            "      JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i) "
            "FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid "
            "WHERE c.contype = 'f' AND c.confrelid = {} AND c.conparentid = 0 "
            "AND cl.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s)"
        ).format(catalog.RELATION_OID),
        [copy.source_schema, copy.source_table, copy.source_schema],
    )
    return [
        LegacyChild(by_table[table], tuple(columns), tuple(referenced))
        for _regclass, table, columns, referenced in rows
        if table in by_table
    ]


def _delete_gone_children(copy: TableCopy, child: LegacyChild, types: list[str]) -> sql.Composed:
    """Before a parent row goes from the legacy side: its legacy children whose new rows are gone already.

    The new side's cascade deletes the children's new rows before the parent's trigger runs, but
    queues their triggers behind it (PostgreSQL runs a foreign key's actions without firing their
    triggers on the spot); the legacy parent's foreign key would refuse the delete meanwhile."""
    parent_key = sql.SQL("({})").format(
        sql.SQL(", ").join(sql.SQL("p.{}").format(sql.Identifier(c)) for c in child.referenced)
    )
    child_columns = sql.SQL("({})").format(
        sql.SQL(", ").join(sql.SQL("l.{}").format(sql.Identifier(c)) for c in child.columns)
    )
    same = sql.SQL(" AND ").join(sql.SQL("t.{k} = l.{k}").format(k=sql.Identifier(k)) for k in child.copy.key)
    return sql.SQL(
        "DELETE FROM {child} l WHERE {child_columns} IN (SELECT {parent_key} FROM {parent} p WHERE {match}) "
        "AND NOT EXISTS (SELECT 1 FROM {new_child} t WHERE {same})"
    ).format(
        child=child.copy.source_rows,
        child_columns=child_columns,
        parent_key=parent_key,
        parent=copy.source_rows,
        match=recopy.keys_in("p", copy.key, types, KEYS),
        new_child=child.copy.target,
        same=same,
    )


def reverse_statements(
    copy: TableCopy, references: Iterable[ReverseReference], children: Iterable[LegacyChild] = ()
) -> tuple[list[sql.Composed], list[sql.Composed]]:
    """New -> legacy for the written keys: the inverse of :func:`forward_statements` (shared reference ids
    translated back to the tenant's legacy ids, instants written as wall-clock times of the legacy zone)."""
    by_column = {r.column: r for r in references}
    tenant = next((r.tenant_id for r in copy.remaps), None)
    legacy_columns = [c.name for c in copy.schema_catalog.columns(copy.source_schema, copy.source_table)]
    new_columns = {c.name for c in copy.schema_catalog.columns(copy.target_schema, copy.target_table)}
    generated = _generated_columns(copy.source_schema, copy.source_table)
    columns = [c for c in legacy_columns if c in new_columns and c not in generated]
    zoned = set(zoned_columns(copy)) if copy.legacy_timezone is not None else set()
    types = recopy.key_types(copy.target_schema, copy.target_table, copy.key, copy.schema_catalog)
    check = crossed_write_check(
        copy, copy.source_rows, recopy.key_types(copy.source_schema, copy.source_table, copy.key, copy.schema_catalog)
    )
    statements = [check]

    def legacy_id(column: str) -> sql.Composed:
        ref = by_column[column].legacy
        return sql.SQL("{fn}({tenant}, {ref}, {schema}, {legacy}, {shared_schema}, {shared}, {cols}, t.{c})").format(
            fn=sql.Identifier(SYNC_SCHEMA, "legacy_reference_id"),
            tenant=sql.Literal(tenant),
            ref=sql.Literal(ref.map_name),
            schema=sql.Literal(copy.source_schema),
            legacy=sql.Literal(ref.legacy_table),
            shared_schema=sql.Literal(ref.shared_schema),
            shared=sql.Literal(ref.table),
            cols=sql.Literal(reference_value_columns(copy.source_schema, ref, copy.schema_catalog)),
            c=sql.Identifier(column),
        )

    def value(column: str) -> sql.Composable:
        if column in by_column:
            return legacy_id(column)
        if column in zoned:
            return copy.in_legacy_zone(sql.SQL("t.{}").format(sql.Identifier(column)))
        return sql.SQL("t.{}").format(sql.Identifier(column))

    select = sql.SQL(", ").join(value(c) for c in columns)
    source = sql.SQL("ONLY {} t").format(copy.target)
    statements.append(
        recopy.upsert(copy.source, columns, copy.key, select, source, recopy.keys_in("t", copy.key, types, KEYS))
    )
    # a delete runs only the deleting statements: it is checked for a crossing writer too
    gone = [check, *(_delete_gone_children(copy, child, types) for child in children)]
    gone.append(recopy.delete_gone(copy.source_rows, copy.key, types, sql.SQL("ONLY {}").format(copy.target), KEYS))
    return statements, gone


def _generated_columns(schema: str, table: str) -> set[str]:
    rows = catalog.relation_rows(
        "SELECT attname FROM pg_attribute WHERE attrelid = {oid} AND attnum > 0 AND attgenerated <> ''", schema, table
    )
    return {r[0] for r in rows}


def reference_value_columns(
    tenant_schema: str, ref: LegacyTable, schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ
) -> list[str]:
    """Columns besides ``id`` that a tenant's legacy reference table and the shared table both have."""
    shared = {c.name for c in schema_catalog.columns(ref.shared_schema, ref.table)}
    legacy = schema_catalog.columns(tenant_schema, ref.legacy_table)
    return [c.name for c in legacy if c.name != "id" and c.name in shared]
