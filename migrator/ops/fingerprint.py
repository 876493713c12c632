"""Content fingerprints: exact row count plus an order-independent sum of 64-bit row hashes.

``md5(string_agg(... ORDER BY id))`` would sort and is capped by the 1 GB text limit; summing
``hashtextextended`` of each row's text needs one scan, no sort, and works at any size. Both sides
hash the same columns in the same order, the source with its reference ids remapped, so equal
fingerprints mean equal content.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from migrator import db
from migrator.ops.copy import TableCopy


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    digest: str

    def __str__(self) -> str:
        return f"{self.rows}:{self.digest}"


def _row_hash(expressions: sql.Composable) -> sql.Composed:
    return sql.SQL("hashtextextended(ROW({})::text, 0)").format(expressions)


def _target_columns(copy: TableCopy) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in copy.columns)


def source_query(copy: TableCopy) -> sql.Composed:
    return sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {src}").format(
        h=_row_hash(copy.select_list()), src=copy.from_clause())


def target_query(copy: TableCopy) -> sql.Composed:
    return sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {t} t").format(
        h=_row_hash(_target_columns(copy)), t=copy.target)


def _fingerprint(query: sql.Composed) -> Fingerprint:
    rows, total = db.fetchone(query) or (0, 0)
    return Fingerprint(int(rows), format(int(total) % 2**80, "020x"))


def source_fingerprint(copy: TableCopy) -> Fingerprint:
    return _fingerprint(source_query(copy))


def target_fingerprint(copy: TableCopy) -> Fingerprint:
    return _fingerprint(target_query(copy))


def differing_keys(copy: TableCopy, limit: int = 10) -> list[tuple[object, ...]]:
    """Keys of rows that differ or exist on one side only (run only after a mismatch)."""
    keys_s = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in copy.key)
    keys_t = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in copy.key)
    src = sql.SQL("SELECT {k}, {h} AS h FROM {f}").format(k=keys_s, h=_row_hash(copy.select_list()), f=copy.from_clause())
    tgt = sql.SQL("SELECT {k}, {h} AS h FROM {t} t").format(k=keys_t, h=_row_hash(_target_columns(copy)), t=copy.target)
    order = sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(copy.key)))
    query = sql.SQL("SELECT DISTINCT {cols} FROM (({a}) EXCEPT ({b}) UNION ALL (({b}) EXCEPT ({a}))) d "
                    "ORDER BY {order} LIMIT %s").format(
        cols=db.ident_list(copy.key), a=src, b=tgt, order=order)
    return [tuple(row) for row in db.fetchall(query, [limit])]
