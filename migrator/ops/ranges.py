"""Splitting a large table into key ranges of about equal rows, from the planner's statistics only.

The cut points are the key column's histogram bounds (``pg_stats.histogram_bounds``): ANALYZE takes
them from a random sample of the table so that each histogram bucket holds about the same number of
rows, however the keys are spread (90 % of the ids in one narrow band give narrow buckets there and
wide ones elsewhere). Nothing is counted or scanned to plan: a table with no statistics yet (never
analyzed) gets an ANALYZE of its key column, which reads a sample of at most 30,000 rows.

The first range starts below every key and the last ends above every key, so keys outside the
sampled bounds (rows added since ANALYZE) still belong to a range. Statistics that no longer describe the
table (a row count off by more than 2x, or keys far outside the histogram: rows added since with the row
estimate kept right by a VACUUM) are taken again first, else one range would hold most of the rows.
"""

from __future__ import annotations

import math

from psycopg import sql

from migrator import catalog, db
from migrator.core.steps import KeyRange

INTEGER_TYPES = (20, 21, 23)  # bigint, smallint, integer
# A table is split into at most this many ranges (the default histogram has 100 buckets).
MAX_RANGES = 64


def _statistics(schema: str, table: str, key: str) -> tuple[float, list[int] | None, bool]:
    """(estimated rows, the key's histogram bounds, whether the key is an integer column)."""
    row = db.fetchone(
        "SELECT c.reltuples, s.histogram_bounds::text, a.atttypid::int "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = %s AND NOT a.attisdropped "
        "LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = a.attname "
        "AND NOT s.inherited "
        "WHERE n.nspname = %s AND c.relname = %s",
        [key, schema, table],
    )
    if row is None:
        return 0.0, None, False
    estimate, bounds, type_oid = row
    is_integer = type_oid in INTEGER_TYPES
    values = [int(v) for v in bounds.strip("{}").split(",")] if bounds and is_integer else None
    return float(estimate), values, is_integer


# Keys outside the histogram over more than this share of the span it covers: the statistics describe
# another table than the one there is now (rows added since ANALYZE with the row estimate kept right).
OUTSIDE_SHARE = 0.1


def _keys_outside(schema: str, table: str, key: str, bounds: list[int]) -> bool:
    """The table's lowest or highest key lies far outside ``bounds`` (two probes of the key's index; no
    index on the key, nothing is read and the statistics are taken as they are)."""
    first = sql.SQL("(SELECT {k} FROM ONLY {t} ORDER BY {k} {order} LIMIT 1)")
    row = db.fetchone(
        sql.SQL(
            "SELECT {lowest}, {highest} WHERE EXISTS (SELECT FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = {oid} AND a.attname = %s "
            "AND i.indpred IS NULL)"
        ).format(
            lowest=first.format(k=sql.Identifier(key), t=sql.Identifier(schema, table), order=sql.SQL("ASC")),
            highest=first.format(k=sql.Identifier(key), t=sql.Identifier(schema, table), order=sql.SQL("DESC")),
            oid=catalog.RELATION_OID,
        ),
        [schema, table, key],
    )
    if row is None or row[0] is None:
        return False
    lowest, highest = int(row[0]), int(row[1])
    covered = max(bounds[-1] - bounds[0], 1)
    outside = max(0, bounds[0] - lowest) + max(0, highest - bounds[-1])
    return outside > OUTSIDE_SHARE * covered


def analyze_key(schema: str, table: str, key: str) -> None:
    """Statistics of the key column (and the table's row estimate) from a sample."""
    db.execute(sql.SQL("ANALYZE {} ({})").format(sql.Identifier(schema, table), sql.Identifier(key)))


def plan_key_ranges(
    schema: str, table: str, key: str, range_rows: int, rows: int | None = None, max_ranges: int = MAX_RANGES
) -> list[KeyRange]:
    """Ranges of about ``range_rows`` rows each covering every key of ``schema.table`` (an integer
    ``key``), or none when the table is not larger than ``range_rows``.

    ``rows``: the table's row count when the caller knows it (a copy counted its source): statistics
    that are far from it are taken again first, so that the bounds describe the rows there are now.
    """
    estimate, bounds, is_integer = _statistics(schema, table, key)
    if not is_integer:
        return []
    stale = rows is not None and (estimate <= 0 or not 0.5 <= rows / max(estimate, 1.0) <= 2.0)
    if not stale and bounds and len(bounds) >= 2:
        stale = _keys_outside(schema, table, key, bounds)
    if bounds is None or estimate < 0 or stale:
        analyze_key(schema, table, key)
        estimate, bounds, _ = _statistics(schema, table, key)
    total = rows if rows is not None else max(int(estimate), 0)
    if not bounds or len(bounds) < 3 or total <= range_rows:
        return []
    count = min(math.ceil(total / range_rows), len(bounds) - 1, max_ranges)
    # Interior cut points, equally many histogram buckets apart (each bucket holds about as many rows).
    cuts = sorted({bounds[round(i * (len(bounds) - 1) / count)] for i in range(1, count)})
    if not cuts:
        return []
    edges: list[int | None] = [None, *cuts, None]
    count = len(edges) - 1
    return [
        KeyRange(index=i + 1, count=count, after=edges[i], through=edges[i + 1], rows_planned=round(total / count))
        for i in range(count)
    ]


def estimated_rows(schemas: list[str], tables: list[str]) -> dict[str, float]:
    """Per schema, the planner's estimate of the rows of its ``tables`` (0 for a table never analyzed):
    one catalog query, no table read."""
    rows = db.fetchall(
        "SELECT n.nspname, sum(greatest(c.reltuples, 0)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p') GROUP BY n.nspname",
        [schemas, tables],
    )
    return {schema: float(total) for schema, total in rows}
