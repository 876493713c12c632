"""Content fingerprints: exact row count plus an order-independent sum of 64-bit row hashes.

``md5(string_agg(... ORDER BY id))`` would sort and is capped by the 1 GB text limit; a sum of row
hashes needs one scan, no sort, and works at any size. Both sides hash the same columns in the same
order, so equal fingerprints mean equal content.

How a row is hashed (:data:`BY_VALUE`): each column by its type's own hash function where the type
declares that equal values are identical (integers, timestamps, text under a deterministic
collation, ...: :func:`migrator.catalog.hashed_by_value`), every other column by its text (numeric
keeps 1.0 apart from 1.00, jsonb, arrays, ...); PostgreSQL combines them (``hash_record_extended``),
and that combination, which is linear in the column hashes, is hashed once more so that values
swapped between rows change the sum. Turning every row into text and hashing that
(:data:`BY_TEXT`, how fingerprints were made up to this release) costs about 2.5 times as much
server time; a fingerprint recorded that way is still compared the way it was made (the ``method``
of :class:`migrator.core.fingerprint.Fingerprint`), so a migration validated by an earlier release
cuts over with this one.

A remapped reference column is hashed as the *code* (merge key) of the row it points at, read from
the legacy reference table on the source side and from the shared table on the target side, never
as the remapped id: an id translated through a stale map on both sides would look equal while
pointing at another type.

A legacy column of another type than its target column is compared in the legacy type's terms
(:data:`EXACT`, recorded as "rows:v3:digest"): the legacy value as it is on the source side, the
target value cast back to the legacy type on the target side, so a lossy conversion (1.50 into a
bigint as 2) can never make two different values hash equal. Two conversions are compared
otherwise: a legacy ``timestamp`` read in the legacy application's zone into ``timestamptz`` is
compared as the instant on both sides (``s.c AT TIME ZONE zone`` and ``t.c``); ``json`` into
``jsonb`` as the jsonb (jsonb rewrites every object's spelling; what it loses, an object's duplicate
keys, the copy refuses beforehand: :func:`migrator.ops.conversions.refuse_inexact_conversions`). Releases
before this one hashed such a column as the legacy value cast to the target's type (:data:`BY_VALUE`,
"v2"), which any lossy cast passes; a fingerprint recorded that way is still compared that way. A
table without converted columns hashes the same either way and is still recorded as "v2".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import LiteralString

from psycopg import sql

from migrator import catalog, db
from migrator.core.fingerprint import BY_TEXT, BY_VALUE, EXACT, Fingerprint
from migrator.ops.table_copy import (
    JSON_OID,
    JSONB_OID,
    Remap,
    TableCopy,
    TypeDifference,
    type_differences,
    zoned_columns,
)
from migrator.tables import reference_table

# One side of a comparison: the elements each row's hash is made of, and the FROM clause they are read from.
Side = tuple[list[sql.Composable], sql.Composed]

# What a new fingerprint is made with: EXACT where the table has converted columns, else BY_VALUE
# (the same hashes; the record keeps the form earlier releases read).
CURRENT = "current"


@dataclass(frozen=True)
class Comparison:
    """Both sides' fingerprints and, when they differ, some differing keys, all read in one snapshot."""

    source: Fingerprint
    target: Fingerprint
    differing_keys: list[tuple[object, ...]]

    @property
    def matches(self) -> bool:
        return self.source == self.target


def _column_facts(copy: TableCopy) -> tuple[list[TypeDifference], set[str]]:
    """Columns whose legacy type differs from the target's, and the columns both sides can hash by value."""
    legacy = {c.name: c for c in copy.schema_catalog.columns(copy.source_schema, copy.source_table)}
    target = {c.name: c for c in copy.schema_catalog.columns(copy.target_schema, copy.target_table)}
    remapped = {r.column for r in copy.remaps}
    on_both_sides = [c for c in copy.columns if c not in remapped and c in legacy and c in target]
    differences = type_differences(copy)
    # Both sides' types and collations must allow it: a cast keeps the legacy column's collation.
    by_value = {
        c
        for c in on_both_sides
        if catalog.hashed_by_value(target[c].type_oid, target[c].collation_oid)
        and catalog.hashed_by_value(legacy[c].type_oid, legacy[c].collation_oid)
    }
    return differences, by_value


def _row_hash(elements: list[sql.Composable], method: str) -> sql.Composed:
    items = sql.SQL(", ").join(elements)
    if method == BY_TEXT:
        return sql.SQL("hashtextextended(ROW({})::text, 0)").format(items)
    return sql.SQL("hashint8extended(hash_record_extended(ROW({}), 0), 0)").format(items)


def _as_text(expression: sql.Composable) -> sql.Composed:
    """A value hashed by its text: byte for byte, whatever the column's collation."""
    return sql.SQL('({})::text COLLATE "C"').format(expression)


def _column_element(expression: sql.Composable, column: str, by_value: set[str], method: str) -> sql.Composable:
    return expression if method == BY_TEXT or column in by_value else _as_text(expression)


def _reference_alias(remap: Remap) -> sql.Identifier:
    return sql.Identifier("ref_" + remap.column)


def _reference_elements(alias: str, remap: Remap, method: str) -> list[sql.Composable]:
    """NULL stays NULL; an id that points at no reference row hashes apart from every code."""
    is_null = sql.SQL("{a}.{c} IS NULL").format(a=sql.Identifier(alias), c=sql.Identifier(remap.column))
    code = sql.SQL("{r}.{k}").format(
        r=_reference_alias(remap), k=sql.Identifier(reference_table(remap.reference_table).merge_key)
    )
    if method == BY_TEXT:
        return [sql.SQL("ROW({}, {})").format(is_null, code)]
    return [is_null, _as_text(code)]  # legacy and shared code columns may differ in type: both as text


def _sides(copy: TableCopy, method: str) -> tuple[Side, Side, str]:
    """(hashed elements, FROM clause) of the source side and of the target side, from one catalog read,
    and the method they are made with (``CURRENT`` resolved)."""
    differences, by_value = _column_facts(copy)
    if method == CURRENT:
        method = EXACT if differences else BY_VALUE
    source_values, target_values = _converted_values(copy, method, differences)
    return (
        _source(copy, method, source_values, by_value),
        _target(copy, method, target_values, by_value),
        method,
    )


Values = dict[str, sql.Composable]  # column -> the expression hashed instead of the column itself


def _converted_values(copy: TableCopy, method: str, differences: list[TypeDifference]) -> tuple[Values, Values]:
    """What each side hashes for the columns of another type (see the module docstring)."""
    source: Values = {}
    target: Values = {}
    zoned = set(zoned_columns(copy)) if copy.legacy_timezone is not None else set()
    for d in differences:
        legacy_value = sql.SQL("s.{}").format(sql.Identifier(d.column))
        target_value = sql.SQL("t.{}").format(sql.Identifier(d.column))
        if method != EXACT or (d.legacy_type_oid, d.target_type_oid) == (JSON_OID, JSONB_OID):
            # format_type() output of the target column, PostgreSQL's own spelling of a type
            source[d.column] = sql.SQL("{}::{}").format(legacy_value, sql.SQL(d.target_type))
        elif d.column in zoned:
            source[d.column] = copy.in_legacy_zone(legacy_value)
        else:
            target[d.column] = sql.SQL("CAST({} AS {})").format(target_value, sql.SQL(d.legacy_type))
    return source, target


def _elements(
    copy: TableCopy, alias: LiteralString, method: str, values: Values, by_value: set[str]
) -> list[sql.Composable]:
    """What one side hashes, column by column in the copy's order, read from the table aliased ``alias``:
    both sides hash the same elements, or the sums could never match."""
    remapped = {r.column: r for r in copy.remaps}
    elements: list[sql.Composable] = []
    for column in copy.columns:
        if column in remapped:
            elements += _reference_elements(alias, remapped[column], method)
        else:
            value = values.get(column, sql.SQL("{}.{}").format(sql.SQL(alias), sql.Identifier(column)))
            elements.append(_column_element(value, column, by_value, method))
    return elements


def _source(copy: TableCopy, method: str, values: Values, by_value: set[str]) -> Side:
    """(hashed elements, FROM clause) of the source side, aliased ``s``."""
    joins = [sql.SQL("{} s").format(copy.source_rows)]
    for remap in copy.remaps:
        if copy.schema_catalog.table_exists(copy.source_schema, remap.reference_table):
            joins.append(
                sql.SQL(" LEFT JOIN {ref} {a} ON {a}.id = s.{c}").format(
                    ref=copy.legacy_reference_rows(remap),
                    a=_reference_alias(remap),
                    c=sql.Identifier(remap.column),
                )
            )
        else:  # no legacy reference table: every non-NULL id points at nothing
            joins.append(
                sql.SQL(" LEFT JOIN (SELECT NULL::bigint AS id, NULL::text AS {k}) {a} ON false").format(
                    k=sql.Identifier(reference_table(remap.reference_table).merge_key), a=_reference_alias(remap)
                )
            )
    return _elements(copy, "s", method, values, by_value), sql.Composed(joins)


def _target(copy: TableCopy, method: str, values: Values, by_value: set[str]) -> Side:
    """(hashed elements, FROM clause) of the target side, aliased ``t``."""
    joins = [sql.SQL("{} t").format(copy.target)]
    for remap in copy.remaps:
        shared = reference_table(remap.reference_table)
        joins.append(
            sql.SQL(" LEFT JOIN {ref} {a} ON {a}.id = t.{c}").format(
                ref=sql.Identifier(str(shared.schema), shared.table),
                a=_reference_alias(remap),
                c=sql.Identifier(remap.column),
            )
        )
    return _elements(copy, "t", method, values, by_value), sql.Composed(joins)


def _sum_query(side: Side, method: str, where: sql.Composable | None = None) -> sql.Composed:
    elements, from_clause = side
    query = sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {f}").format(
        h=_row_hash(elements, method), f=from_clause
    )
    return query + sql.SQL(" WHERE {}").format(where) if where is not None else query


def source_query(copy: TableCopy, method: str = CURRENT) -> sql.Composed:
    source, _target, method = _sides(copy, method)
    return _sum_query(source, method)


def target_query(copy: TableCopy, method: str = CURRENT) -> sql.Composed:
    _source, target, method = _sides(copy, method)
    return _sum_query(target, method)


DIGEST_MODULUS = 2**80


def _fingerprint(query: sql.Composed, method: str, params: Sequence[object] | None = None) -> Fingerprint:
    rows, total = db.fetchone(query, params) or (0, 0)
    return _as_fingerprint(rows, total, method)


def source_fingerprint(copy: TableCopy, method: str = CURRENT) -> Fingerprint:
    source, _target, method = _sides(copy, method)
    return _fingerprint(_sum_query(source, method), method)


def target_fingerprint(copy: TableCopy, method: str = CURRENT) -> Fingerprint:
    _source, target, method = _sides(copy, method)
    return _fingerprint(_sum_query(target, method), method)


def both_fingerprints(copy: TableCopy, method: str = CURRENT) -> tuple[Fingerprint, Fingerprint]:
    """Source and target fingerprints in one statement (one round trip; each side scanned as on its own)."""
    source, target, method = _sides(copy, method)
    row = db.fetchone(
        sql.SQL("SELECT s.*, t.* FROM ({s}) s CROSS JOIN ({t}) t").format(
            s=_sum_query(source, method), t=_sum_query(target, method)
        )
    ) or (0, 0, 0, 0)
    return _as_fingerprint(row[0], row[1], method), _as_fingerprint(row[2], row[3], method)


def _in_range(copy: TableCopy, alias: str, after: int | None, through: int | None) -> sql.Composable | None:
    """``alias``'s single key above ``after`` and up to ``through`` (None: unbounded on that side)."""
    (key,) = copy.key
    column = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(key))
    conditions = []
    if after is not None:
        conditions.append(sql.SQL("{} > {}").format(column, sql.Literal(after)))
    if through is not None:
        conditions.append(sql.SQL("{} <= {}").format(column, sql.Literal(through)))
    return sql.SQL(" AND ").join(conditions) if conditions else None


def both_fingerprints_in_range(
    copy: TableCopy, after: int | None, through: int | None, method: str = CURRENT
) -> tuple[Fingerprint, Fingerprint]:
    """:func:`both_fingerprints` of the rows whose key is in one range of a table validated in ranges:
    the table's fingerprint is the :func:`combined` fingerprint of its ranges."""
    source, target, method = _sides(copy, method)
    row = db.fetchone(
        sql.SQL("SELECT s.*, t.* FROM ({s}) s CROSS JOIN ({t}) t").format(
            s=_sum_query(source, method, _in_range(copy, "s", after, through)),
            t=_sum_query(target, method, _in_range(copy, "t", after, through)),
        )
    ) or (0, 0, 0, 0)
    return _as_fingerprint(row[0], row[1], method), _as_fingerprint(row[2], row[3], method)


def combined(parts: Sequence[Fingerprint]) -> Fingerprint:
    """The fingerprint of a table whose key ranges (disjoint, together every row) have ``parts``: a count
    and a sum of row hashes add up range by range."""
    methods = {part.method for part in parts}
    if len(methods) != 1:
        raise ValueError("fingerprints made different ways cannot be combined")
    digest = sum(int(part.digest, 16) for part in parts) % DIGEST_MODULUS
    return Fingerprint(sum(part.rows for part in parts), format(digest, "020x"), methods.pop())


def _as_fingerprint(rows: int, total: int, method: str) -> Fingerprint:
    return Fingerprint(int(rows), format(int(total) % DIGEST_MODULUS, "020x"), method)


def differing_keys(copy: TableCopy, limit: int = 10) -> list[tuple[object, ...]]:
    """Keys of rows that differ or exist on one side only (run only after a mismatch)."""
    keys_s = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in copy.key)
    keys_t = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in copy.key)
    (source_elements, source), (target_elements, target), method = _sides(copy, CURRENT)
    src = sql.SQL("SELECT {k}, {h} AS h FROM {f}").format(k=keys_s, h=_row_hash(source_elements, method), f=source)
    tgt = sql.SQL("SELECT {k}, {h} AS h FROM {t}").format(k=keys_t, h=_row_hash(target_elements, method), t=target)
    order = sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(copy.key)))
    query = sql.SQL(
        "SELECT DISTINCT {cols} FROM (({a}) EXCEPT ({b}) UNION ALL (({b}) EXCEPT ({a}))) d ORDER BY {order} LIMIT %s"
    ).format(cols=db.ident_list(copy.key), a=src, b=tgt, order=order)
    return [tuple(row) for row in db.fetchall(query, [limit])]
