"""Statements that make the rows of some keys in one table what they are in another: an upsert of the keys
the source still has and a delete of the others. The change capture's apply runs them with the captured keys
as a parameter; the two-way sync's triggers with the written keys as ``$1``. Not delete + re-insert: the
target's foreign keys may cascade in the database (a contact's activities would go with it)."""

from __future__ import annotations

from psycopg import sql

from migrator import catalog, db
from migrator.ops.table_copy import TableCopy


def key_types(
    schema: str, table: str, key: tuple[str, ...], schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ
) -> list[str]:
    """The key columns' types as ``format_type()`` writes them."""
    types = {c.name: c.data_type for c in schema_catalog.columns(schema, table)}
    return [types[k] for k in key]


def keys_in(alias: str, key: tuple[str, ...], types: list[str], keys: sql.Composable) -> sql.Composed:
    """``(alias.k1, ...) IN`` the keys of the jsonb array ``keys`` (a parameter), cast to the key's types."""
    row = sql.SQL("({})").format(
        sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(k)) for k in key)
    )
    casts = sql.SQL(", ").join(
        sql.SQL("(e ->> {i})::{t}").format(i=sql.Literal(i), t=sql.SQL(t))  # t: format_type() of the catalog
        for i, t in enumerate(types)
    )
    return sql.SQL("{row} IN (SELECT {casts} FROM jsonb_array_elements({keys}) e)").format(
        row=row, casts=casts, keys=keys
    )


def upsert(
    target: sql.Identifier,
    columns: list[str],
    key: tuple[str, ...],
    select: sql.Composable,
    source: sql.Composable,
    match: sql.Composable,
    updated: list[str] | None = None,
) -> sql.Composed:
    """Insert the selected rows, or update ``updated`` (default: every column) of those already there."""
    non_key = [c for c in (columns if updated is None else updated) if c not in key]
    conflict = (
        sql.SQL("DO UPDATE SET ({cols}) = ROW({excluded})").format(
            cols=db.ident_list(non_key),
            excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in non_key),
        )
        if non_key
        else sql.SQL("DO NOTHING")
    )
    return sql.SQL(
        "INSERT INTO {target} ({cols}) SELECT {select} FROM {source} WHERE {match} ON CONFLICT ({key}) {conflict}"
    ).format(
        target=target,
        cols=db.ident_list(columns),
        select=select,
        source=source,
        match=match,
        key=db.ident_list(key),
        conflict=conflict,
    )


def delete_gone(
    target: sql.Composable, key: tuple[str, ...], types: list[str], source: sql.Composable, keys: sql.Composable
) -> sql.Composed:
    """Delete ``keys`` from ``target`` when ``source`` no longer has them."""
    same = sql.SQL(" AND ").join(sql.SQL("s.{k} = t.{k}").format(k=sql.Identifier(k)) for k in key)
    return sql.SQL(
        "DELETE FROM {target} t WHERE {match} AND NOT EXISTS (SELECT 1 FROM {source} s WHERE {same})"
    ).format(target=target, match=keys_in("t", key, types, keys), source=source, same=same)


def copy_statements(copy: TableCopy, keys: sql.Composable) -> tuple[sql.Composed, sql.Composed]:
    """``copy``'s source rows of ``keys`` into its target through the copy's own remapping ``SELECT`` (an
    upsert that leaves the target's filled columns as they are), and a delete of the keys the source lost."""
    types = key_types(copy.source_schema, copy.source_table, copy.key, copy.schema_catalog)
    return (
        upsert(
            copy.target,
            list(copy.insert_columns()),
            copy.key,
            copy.select_list(),
            copy.from_clause(),
            keys_in("s", copy.key, types, keys),
            updated=list(copy.columns),  # a column the source lacks keeps what it was given
        ),
        delete_gone(copy.target, copy.key, types, copy.source_rows, keys),
    )
