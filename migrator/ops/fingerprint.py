"""Content fingerprints: exact row count plus an order-independent sum of 64-bit row hashes.

``md5(string_agg(... ORDER BY id))`` would sort and is capped by the 1 GB text limit; summing
``hashtextextended`` of each row's text needs one scan, no sort, and works at any size. Both sides
hash the same columns in the same order, so equal fingerprints mean equal content.

A remapped reference column is hashed as the *code* (merge key) of the row it points at, read from
the legacy reference table on the source side and from the shared table on the target side, never
as the remapped id: an id translated through a stale map on both sides would look equal while
pointing at another type. A legacy column of another type than its target column (``timestamp``
into ``timestamptz``, ``json`` into ``jsonb``, ``char(20)`` into ``text``) is hashed as the target's
type, the conversion the copy made, so rows compare by value and not by their legacy spelling.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from migrator import catalog, db
from migrator.ops.capture import keys_filter
from migrator.ops.copy import Remap, TableCopy
from migrator.tables import reference_table


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    digest: str

    def __str__(self) -> str:
        return f"{self.rows}:{self.digest}"


@dataclass(frozen=True)
class Comparison:
    """Both sides' fingerprints and, when they differ, some differing keys, all read in one snapshot."""

    source: Fingerprint
    target: Fingerprint
    differing_keys: list[tuple[object, ...]]

    @property
    def matches(self) -> bool:
        return str(self.source) == str(self.target)


@dataclass(frozen=True)
class TypeDifference:
    """A legacy column whose type differs from its target column's."""

    column: str
    legacy_type: str
    target_type: str

    def __str__(self) -> str:
        return f"{self.column} ({self.legacy_type} in the legacy table, {self.target_type} in the target)"


def type_differences(copy: TableCopy) -> list[TypeDifference]:
    """Copied columns whose legacy type is not the target's (remapped reference columns aside)."""
    legacy = {c.name: c.data_type for c in catalog.columns(copy.source_schema, copy.source_table)}
    target = {c.name: c.data_type for c in catalog.columns(copy.target_schema, copy.target_table)}
    remapped = {r.column for r in copy.remaps}
    return [
        TypeDifference(c, legacy[c], target[c])
        for c in copy.columns
        if c not in remapped and c in legacy and c in target and legacy[c] != target[c]
    ]


def _row_hash(expressions: sql.Composable) -> sql.Composed:
    return sql.SQL("hashtextextended(ROW({})::text, 0)").format(expressions)


def _reference_alias(remap: Remap) -> sql.Identifier:
    return sql.Identifier("ref_" + remap.column)


def _reference_value(alias: str, remap: Remap) -> sql.Composed:
    """NULL stays NULL; an id that points at no reference row hashes apart from every code."""
    return sql.SQL("ROW({a}.{c} IS NULL, {r}.{k})").format(
        a=sql.Identifier(alias),
        c=sql.Identifier(remap.column),
        r=_reference_alias(remap),
        k=sql.Identifier(reference_table(remap.reference_table).merge_key),
    )


def _source(copy: TableCopy) -> tuple[sql.Composed, sql.Composed]:
    """(hashed expressions, FROM clause) of the source side, aliased ``s``."""
    remapped = {r.column: r for r in copy.remaps}
    converted = {d.column: d.target_type for d in type_differences(copy)}
    expressions = []
    for column in copy.columns:
        if column in remapped:
            expressions.append(_reference_value("s", remapped[column]))
        elif column in converted:
            # format_type() output of the target column, PostgreSQL's own spelling of a type
            expressions.append(sql.SQL("s.{}::{}").format(sql.Identifier(column), sql.SQL(converted[column])))
        else:
            expressions.append(sql.SQL("s.{}").format(sql.Identifier(column)))
    joins = [sql.SQL("{} s").format(copy.source)]
    for remap in copy.remaps:
        if catalog.table_exists(copy.source_schema, remap.reference_table):
            joins.append(
                sql.SQL(" LEFT JOIN {ref} {a} ON {a}.id = s.{c}").format(
                    ref=sql.Identifier(copy.source_schema, remap.reference_table),
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
    return sql.SQL(", ").join(expressions), sql.Composed(joins)


def _target(copy: TableCopy) -> tuple[sql.Composed, sql.Composed]:
    """(hashed expressions, FROM clause) of the target side, aliased ``t``."""
    remapped = {r.column: r for r in copy.remaps}
    expressions = sql.SQL(", ").join(
        _reference_value("t", remapped[c]) if c in remapped else sql.SQL("t.{}").format(sql.Identifier(c))
        for c in copy.columns
    )
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
    return expressions, sql.Composed(joins)


def source_query(copy: TableCopy) -> sql.Composed:
    expressions, source = _source(copy)
    return sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {src}").format(h=_row_hash(expressions), src=source)


def target_query(copy: TableCopy) -> sql.Composed:
    expressions, target = _target(copy)
    return sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {t}").format(h=_row_hash(expressions), t=target)


DIGEST_MODULUS = 2**80


def _fingerprint(query: sql.Composed, params: Sequence[object] | None = None) -> Fingerprint:
    rows, total = db.fetchone(query, params) or (0, 0)
    return _as_fingerprint(rows, total)


def fingerprints_of_keys(copy: TableCopy, keys: list[object]) -> tuple[Fingerprint, Fingerprint]:
    """Source and target fingerprints of the rows of ``keys`` only (a key on neither side adds nothing)."""
    payload = [json.dumps(keys)]
    source_expressions, source = _source(copy)
    target_expressions, target = _target(copy)
    return (
        _fingerprint(
            sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {f} WHERE {k}").format(
                h=_row_hash(source_expressions), f=source, k=keys_filter(copy, "s")
            ),
            payload,
        ),
        _fingerprint(
            sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {f} WHERE {k}").format(
                h=_row_hash(target_expressions), f=target, k=keys_filter(copy, "t")
            ),
            payload,
        ),
    )


def replaced(whole: Fingerprint, before: Fingerprint, after: Fingerprint) -> Fingerprint:
    """``whole``'s fingerprint once the rows fingerprinted ``before`` became the rows fingerprinted ``after``
    (a count and a sum of row hashes: both subtract and add)."""
    digest = (int(whole.digest, 16) - int(before.digest, 16) + int(after.digest, 16)) % DIGEST_MODULUS
    return Fingerprint(whole.rows - before.rows + after.rows, format(digest, "020x"))


def source_fingerprint(copy: TableCopy) -> Fingerprint:
    return _fingerprint(source_query(copy))


def target_fingerprint(copy: TableCopy) -> Fingerprint:
    return _fingerprint(target_query(copy))


def both_fingerprints(copy: TableCopy) -> tuple[Fingerprint, Fingerprint]:
    """Source and target fingerprints in one statement (one round trip; each side scanned as on its own)."""
    row = db.fetchone(
        sql.SQL("SELECT s.*, t.* FROM ({s}) s CROSS JOIN ({t}) t").format(s=source_query(copy), t=target_query(copy))
    ) or (0, 0, 0, 0)
    return _as_fingerprint(row[0], row[1]), _as_fingerprint(row[2], row[3])


def _as_fingerprint(rows: int, total: int) -> Fingerprint:
    return Fingerprint(int(rows), format(int(total) % DIGEST_MODULUS, "020x"))


def differing_keys(copy: TableCopy, limit: int = 10) -> list[tuple[object, ...]]:
    """Keys of rows that differ or exist on one side only (run only after a mismatch)."""
    keys_s = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in copy.key)
    keys_t = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in copy.key)
    source_expressions, source = _source(copy)
    target_expressions, target = _target(copy)
    src = sql.SQL("SELECT {k}, {h} AS h FROM {f}").format(k=keys_s, h=_row_hash(source_expressions), f=source)
    tgt = sql.SQL("SELECT {k}, {h} AS h FROM {t}").format(k=keys_t, h=_row_hash(target_expressions), t=target)
    order = sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(copy.key)))
    query = sql.SQL(
        "SELECT DISTINCT {cols} FROM (({a}) EXCEPT ({b}) UNION ALL (({b}) EXCEPT ({a}))) d ORDER BY {order} LIMIT %s"
    ).format(cols=db.ident_list(copy.key), a=src, b=tgt, order=order)
    return [tuple(row) for row in db.fetchall(query, [limit])]
