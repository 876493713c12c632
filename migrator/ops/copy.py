"""Moving rows between tables of one database: keyset batches of ``INSERT ... SELECT``.

Each batch and its checkpoint commit in one transaction, so a run killed at any moment resumes
from the last committed batch with no duplicate and no gap. The target table itself is the
checkpoint (rows are copied in key order), and the tracking row mirrors it for operators.

Batches commit with ``synchronous_commit = off`` (``SET LOCAL``, that transaction only): COMMIT
returns before the batch's WAL is flushed, and the WAL writer flushes it within a few hundred
milliseconds. Only a crash of the server (not of this process) in that window can lose a batch,
and then it loses the whole batch together with its checkpoint (one transaction; WAL replays in
order, so never a later batch without an earlier one): the table is as if that batch never ran,
and the resumed copy, which starts after the target's own highest key, copies it again. Nothing
is reported done on the strength of an unflushed batch: the step's COMPLETED row is written
afterwards with a synchronous commit, which flushes all WAL before it, every batch included.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import DatabaseError, DataError, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.core.context import RunOptions
from migrator.core.details import CopyRangeDetails, SequenceDetails, read_details
from migrator.core.errors import MigrationError
from migrator.core.steps import COPY_RANGE, KeyRange, StepReporter, StepResult
from migrator.ops.target_columns import Fill


@dataclass(frozen=True)
class Remap:
    """``column`` holds ids of a merged reference table: translate them through the reference map."""

    column: str
    tenant_id: str
    reference_table: str


@dataclass(frozen=True)
class TableCopy:
    """Copy ``source`` into ``target``: same column names, ``remaps`` translated, keyed by ``key``.

    ``columns``: the target's columns the source has too (what is copied and compared); ``fills``: the
    target's columns the source lacks that every insert gives a value (see ops/target_columns.py).
    """

    source_schema: str
    source_table: str
    target_schema: str
    target_table: str
    columns: tuple[str, ...]
    key: tuple[str, ...] = ("id",)
    remaps: tuple[Remap, ...] = field(default_factory=tuple)
    fills: tuple[Fill, ...] = field(default_factory=tuple)
    # The legacy application's time zone: legacy ``timestamp`` values copied into ``timestamptz``
    # columns are read as wall-clock times of this zone (None: the session's, as an implicit cast does).
    legacy_timezone: str | None = None
    # Where the copy's catalog questions are answered: the tenant schema's tables read once for its
    # copy, validation or cutover checks (see catalog.SchemaCatalog), else a query each.
    schema_catalog: catalog.SchemaCatalog = field(default=catalog.NOT_READ, compare=False, repr=False)

    @property
    def source(self) -> sql.Identifier:
        return sql.Identifier(self.source_schema, self.source_table)

    @property
    def source_rows(self) -> sql.Composed:
        """The source as a FROM item that reads its own rows only (see :func:`catalog.own_rows`)."""
        return self.schema_catalog.own_rows(self.source_schema, self.source_table)

    def legacy_reference_rows(self, remap: Remap) -> sql.Composed:
        """The legacy reference table of ``remap`` as a FROM item that reads its own rows only."""
        return self.schema_catalog.own_rows(self.source_schema, remap.reference_table)

    @property
    def target(self) -> sql.Identifier:
        return sql.Identifier(self.target_schema, self.target_table)

    def _remap_alias(self, remap: Remap) -> sql.Identifier:
        return sql.Identifier("map_" + remap.column)

    def unmapped_counts(self, remaps: tuple[Remap, ...] | None = None) -> list[sql.Composed]:
        """Per remap (default: all), a count of the source rows (``s``, joined by :meth:`from_clause`)
        whose reference id has no map entry."""
        return [
            sql.SQL("count(*) FILTER (WHERE s.{c} IS NOT NULL AND {a}.old_id IS NULL)").format(
                c=sql.Identifier(r.column), a=self._remap_alias(r)
            )
            for r in (self.remaps if remaps is None else remaps)
        ]

    def insert_columns(self) -> tuple[str, ...]:
        """The target columns an insert of the copy names: the copied ones, then the filled ones."""
        return self.columns + tuple(f.column for f in self.fills)

    def refuse_unfillable(self) -> None:
        """Raise the one-line refusal of a target column no insert can fill (see ops/target_columns.py)."""
        for fill in self.fills:
            fill.value()

    def select_list(self) -> sql.Composed:
        """Source expressions in :meth:`insert_columns` order, remapped columns taken from the map, legacy
        timestamps read in the legacy application's zone, filled columns given their value (a column
        nothing can fill refuses here, before anything is written)."""
        remapped = {r.column: r for r in self.remaps}
        zoned = set(zoned_columns(self)) if self.legacy_timezone is not None else set()
        copied = [
            sql.SQL("{}.new_id").format(self._remap_alias(remapped[c]))
            if c in remapped
            else self.in_legacy_zone(sql.SQL("s.{}").format(sql.Identifier(c)))
            if c in zoned
            else sql.SQL("s.{}").format(sql.Identifier(c))
            for c in self.columns
        ]
        return sql.SQL(", ").join([*copied, *(f.value() for f in self.fills)])

    def in_legacy_zone(self, value: sql.Composable) -> sql.Composed:
        """A legacy ``timestamp`` as the instant it names in the legacy zone (and an instant back as that
        zone's wall-clock time): explicit, so no session setting decides it."""
        return sql.SQL("({} AT TIME ZONE {})").format(value, sql.Literal(self.legacy_timezone))

    def from_clause(self, remaps: tuple[Remap, ...] | None = None) -> sql.Composed:
        """The source aliased ``s``, joined to the map for ``remaps`` (default: all of them)."""
        joins = [
            sql.SQL(
                " LEFT JOIN public.migrator_reference_map {a} ON {a}.tenant_id = {t} "
                "AND {a}.reference_table = {r} AND {a}.old_id = s.{c}"
            ).format(
                a=self._remap_alias(r),
                t=sql.Literal(r.tenant_id),
                r=sql.Literal(r.reference_table),
                c=sql.Identifier(r.column),
            )
            for r in (self.remaps if remaps is None else remaps)
        ]
        return sql.SQL("{} s").format(self.source_rows) + sql.Composed(joins)

    def key_row(self, alias: str = "s") -> sql.Composed:
        return sql.SQL("({})").format(
            sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(k)) for k in self.key)
        )

    def key_params(self) -> sql.Composed:
        return sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() for _ in self.key))

    def insert_batch_sql(self, bounded: bool) -> sql.Composed:
        """Rows after the last copied key, up to and including an upper key when ``bounded``."""
        query = sql.SQL("INSERT INTO {target} ({cols}) SELECT {select} FROM {src} WHERE {key} > {lo}").format(
            target=self.target,
            cols=db.ident_list(self.insert_columns()),
            select=self.select_list(),
            src=self.from_clause(),
            key=self.key_row(),
            lo=self.key_params(),
        )
        if bounded:
            query += sql.SQL(" AND {key} <= {hi}").format(key=self.key_row(), hi=self.key_params())
        return query

    def insert_missing_sql(self) -> sql.Composed:
        """Source rows whose key the target does not have, wherever they are in key order."""
        return sql.SQL(
            "INSERT INTO {target} ({cols}) SELECT {select} FROM {src} WHERE NOT EXISTS "
            "(SELECT 1 FROM {target} t WHERE {tkey} = {key})"
        ).format(
            target=self.target,
            cols=db.ident_list(self.insert_columns()),
            select=self.select_list(),
            src=self.from_clause(),
            tkey=self.key_row("t"),
            key=self.key_row(),
        )

    def preview(self) -> str:
        return db.render(self.insert_batch_sql(bounded=True))


@dataclass(frozen=True)
class TypeDifference:
    """A legacy column whose type differs from its target column's (``format_type`` spellings)."""

    column: str
    legacy_type: str
    target_type: str
    legacy_type_oid: int = field(default=0, compare=False)
    target_type_oid: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"{self.column} ({self.legacy_type} in the legacy table, {self.target_type} in the target)"


TIMESTAMP_OID = 1114  # timestamp without time zone
TIMESTAMPTZ_OID = 1184
JSON_OID = 114
JSONB_OID = 3802


def type_differences(copy: TableCopy) -> list[TypeDifference]:
    """Copied columns whose legacy type is not the target's (remapped reference columns are translated
    ids, not conversions)."""
    legacy = {c.name: c for c in copy.schema_catalog.columns(copy.source_schema, copy.source_table)}
    target = {c.name: c for c in copy.schema_catalog.columns(copy.target_schema, copy.target_table)}
    remapped = {r.column for r in copy.remaps}
    return [
        TypeDifference(c, legacy[c].data_type, target[c].data_type, legacy[c].type_oid, target[c].type_oid)
        for c in copy.columns
        if c not in remapped and c in legacy and c in target and legacy[c].data_type != target[c].data_type
    ]


def zoned_columns(copy: TableCopy) -> tuple[str, ...]:
    """Legacy ``timestamp`` columns copied into ``timestamptz`` ones: they need the legacy zone."""
    return tuple(
        d.column
        for d in type_differences(copy)
        if d.legacy_type_oid == TIMESTAMP_OID and d.target_type_oid == TIMESTAMPTZ_OID
    )


LEGACY_TIMEZONE_OPTION = "--legacy-timezone"
DATABASE_SETTING = "database setting"


def legacy_timezone(options: RunOptions) -> tuple[str, str]:
    """The legacy application's time zone and where it came from (``--legacy-timezone`` or the
    database's default ``timezone`` setting, the one a new session of the legacy application gets)."""
    if options.legacy_timezone is None:
        return catalog.database_timezone(), DATABASE_SETTING
    if not catalog.timezone_known(options.legacy_timezone):
        raise MigrationError(
            f"--legacy-timezone {options.legacy_timezone!r}: no such time zone on this server; give a name from "
            "pg_timezone_names, e.g. America/New_York or UTC"
        )
    return options.legacy_timezone, LEGACY_TIMEZONE_OPTION


# Conversions the catalog proves exact, so no row needs to be read: (legacy type, target type) by
# format_type spelling; a varchar(n) or numeric(p,s) into the same type without a limit as well.
_WIDENINGS = {
    ("smallint", "integer"),
    ("smallint", "bigint"),
    ("integer", "bigint"),
    ("smallint", "numeric"),
    ("integer", "numeric"),
    ("bigint", "numeric"),
    ("character varying", "text"),
}


def _provably_exact(difference: TypeDifference) -> bool:
    legacy, target = difference.legacy_type, difference.target_type
    unlimited = legacy.split("(", 1)[0] if legacy.endswith(")") else legacy
    return (legacy, target) in _WIDENINGS or (unlimited, target) in {
        ("character varying", "text"),
        ("character varying", "character varying"),
        ("numeric", "numeric"),
    }


def _round_trip(copy: TableCopy, difference: TypeDifference, value: sql.Composable) -> sql.Composed:
    """``value`` (legacy type) converted as the copy converts it, then back into the legacy type."""
    if copy.legacy_timezone is not None and difference.column in zoned_columns(copy):
        return copy.in_legacy_zone(copy.in_legacy_zone(value))
    return sql.SQL("CAST(CAST({v} AS {target}) AS {legacy})").format(
        v=value, target=sql.SQL(difference.target_type), legacy=sql.SQL(difference.legacy_type)
    )


def _changed_by_conversion(copy: TableCopy, difference: TypeDifference, value: sql.Composable) -> sql.Composed:
    """True where the target column cannot hold ``value`` exactly (a cast that raises aside).

    A value is exact when converting it and back gives the same legacy value: by the legacy type's
    equality where equal values are identical (see :func:`catalog.hashed_by_value`), else by the text
    (numeric 2.0 into bigint comes back as 2: the scale is lost). ``json`` into ``jsonb`` is the
    exception: jsonb rewrites the spelling of every object (so the text would never compare), and
    what it loses is the duplicate keys of an object (it keeps the last).
    """
    if difference.legacy_type_oid == JSON_OID and difference.target_type_oid == JSONB_OID:
        # CAST ... IS NULL is never true; it makes a value jsonb refuses (\u0000) raise here.
        return sql.SQL("(CAST({v} AS jsonb) IS NULL OR {dup})").format(v=value, dup=_duplicate_keys(value))
    legacy = {c.name: c for c in copy.schema_catalog.columns(copy.source_schema, copy.source_table)}[difference.column]
    back = _round_trip(copy, difference, value)
    if catalog.hashed_by_value(legacy.type_oid, legacy.collation_oid):
        return sql.SQL("({} IS DISTINCT FROM {})").format(back, value)
    return sql.SQL('(({})::text COLLATE "C" IS DISTINCT FROM ({})::text COLLATE "C")').format(back, value)


def _duplicate_keys(value: sql.Composable) -> sql.Composed:
    """Whether a json value holds an object with the same key twice, at any depth."""
    return sql.SQL(
        "EXISTS (WITH RECURSIVE node(j) AS (SELECT {v} UNION ALL SELECT c.value FROM node CROSS JOIN LATERAL "
        "(SELECT e.value FROM json_each(CASE WHEN json_typeof(node.j) = 'object' THEN node.j END) e "
        "UNION ALL SELECT a.value FROM json_array_elements(CASE WHEN json_typeof(node.j) = 'array' THEN node.j END) a"
        ") c) SELECT FROM node WHERE json_typeof(node.j) = 'object' "
        "AND (SELECT count(*) <> count(DISTINCT k) FROM json_object_keys(node.j) k))"
    ).format(v=value)


SAMPLE_KEYS = 5


def _inexact_rows(copy: TableCopy, difference: TypeDifference) -> tuple[int, list[str]]:
    """Rows whose ``difference.column`` the target cannot hold exactly, and the first few keys: one query.

    Set-based first; a cast that raises (a value out of the target's range, text jsonb refuses)
    aborts that query, so it runs in a savepoint and, if it raised, again through a function that
    catches the error value by value (made for this column in pg_temp and dropped after).
    """
    column = sql.SQL("s.{}").format(sql.Identifier(difference.column))
    keys = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in copy.key)
    query = sql.SQL(
        "SELECT count(*), (array_agg({key}::text ORDER BY {keys}))[1:%s] FROM {src} s WHERE {c} IS NOT NULL AND {bad}"
    )

    def rows_where(bad: sql.Composable) -> tuple[Any, ...] | None:
        statement = query.format(key=copy.key_row(), keys=keys, src=copy.source_rows, c=column, bad=bad)
        return db.fetchone(statement, [SAMPLE_KEYS])

    try:
        with transaction.atomic():
            row = rows_where(_changed_by_conversion(copy, difference, column))
    except (DataError, psycopg.errors.DataException):
        with transaction.atomic():
            function = sql.Identifier("pg_temp", "migrator_inexact_value")
            body = sql.SQL("BEGIN RETURN {bad}; EXCEPTION WHEN data_exception THEN RETURN true; END").format(
                bad=_changed_by_conversion(copy, difference, sql.SQL("v"))
            )
            db.execute(
                sql.SQL("CREATE FUNCTION {f}(v {t}) RETURNS boolean LANGUAGE plpgsql AS {body}").format(
                    f=function, t=sql.SQL(difference.legacy_type), body=sql.Literal(db.render(body))
                )
            )
            row = rows_where(sql.SQL("{f}({c})").format(f=function, c=column))
            db.execute(sql.SQL("DROP FUNCTION {f}({t})").format(f=function, t=sql.SQL(difference.legacy_type)))
    count, keys_found = row or (0, [])
    return int(count), list(keys_found or [])


def inexact_values(copy: TableCopy, difference: TypeDifference) -> tuple[int, list[str]]:
    """Rows whose ``difference.column`` the target type cannot hold exactly, and some keys (none when the
    catalog proves the conversion exact). Reads the source only: phase 1 asks before any target exists."""
    if _provably_exact(difference):
        return 0, []
    return _inexact_rows(copy, difference)


def refuse_inexact_conversions(copy: TableCopy) -> list[TypeDifference]:
    """Refuse, before anything is copied, a table with a value its target column cannot hold exactly.

    Every converted column is checked (one query each) and all of them are named in one line; a
    value is never rounded, cut or rewritten by the copy. Returns the columns of another type.
    """
    differences = type_differences(copy)
    problems = []
    for difference in differences:
        if _provably_exact(difference):
            continue
        count, keys = _inexact_rows(copy, difference)
        if count:
            what = (
                "objects with a key twice (jsonb keeps only the last)"
                if (difference.legacy_type_oid, difference.target_type_oid) == (JSON_OID, JSONB_OID)
                else "values it cannot hold exactly (they would be rounded, cut, shifted or out of range)"
            )
            problems.append(
                f"{copy.source_schema}.{copy.source_table}.{difference.column} ({difference.legacy_type}) has "
                f"{count} rows of {what} for {copy.target_schema}.{copy.target_table}.{difference.column} "
                f"({difference.target_type}), e.g. {'/'.join(copy.key)} {', '.join(keys)}"
            )
    if problems:
        raise MigrationError(
            "; ".join(problems) + "; nothing was copied: correct those rows in the legacy table (or change the "
            "target column's type to one that holds them), then rerun the phase"
        )
    return differences


ASYNC_COMMIT = "SELECT set_config('synchronous_commit', 'off', true)"

# A copy of fewer rows than this runs as one statement that also returns its checkpoint (one round
# trip instead of three). Returning keys costs about 0.4 us a row (20 ms on a batch of 50,000
# contacts, 20 % of the batch) against some 0.3 ms for the two key lookups it saves, so a larger
# table that fits in one batch is copied as a batch like any other.
ONE_STATEMENT_BELOW_ROWS = 1000

# Advisory lock keys (namespace, crc32 of "schema.table") of the per-table copy fence, and of the fence
# of one key range of a table copied in ranges (crc32 of "schema.table#index"); the migrator lock is
# (0x53460000, 1).
COPY_FENCE_NAMESPACE = 0x53460001
RANGE_FENCE_NAMESPACE = 0x53460002


def _fence_key(schema: str, table: str, part: int | None = None) -> list[int]:
    if part is None:
        return [COPY_FENCE_NAMESPACE, zlib.crc32(f"{schema}.{table}".encode()) & 0x7FFFFFFF]
    return [RANGE_FENCE_NAMESPACE, zlib.crc32(f"{schema}.{table}#{part}".encode()) & 0x7FFFFFFF]


@contextmanager
def table_fence(schema: str, table: str, part: int | None = None) -> Iterator[None]:
    """Only one runner writes ``schema.table`` at a time, whatever the migrator lock says.

    A session advisory lock on the connection that writes the batches: it cannot outlive that
    connection, and the batches cannot outlive it either (they run on it), so, unlike the
    migrator lock on its idle connection, it is never lost while batches still commit. A second
    runner that reaches the table while it is held is refused at once; each batch also checks that
    its connection still holds it (see :func:`_check_fence`). A caller that holds it already around a
    copy (a tenant's copy step: the fence covers its constraints too) tells the copy so
    (``copy_table(..., fence_held=True)``) rather than taking it twice.

    ``part``: the fence of one key range of the table (a table copied in ranges is written by several
    connections of one run at once, each range by one of them, under the table's fence held by the step).
    """
    key = _fence_key(schema, table, part)
    if not db.fetchvalue("SELECT pg_try_advisory_lock(%s, %s)", key):
        holder = db.fetchvalue(
            "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            key,
        )
        what = f"{schema}.{table}" if part is None else f"range {part} of {schema}.{table}"
        raise MigrationError(
            f"{what} is being written by another migrate_phase (server pid {holder or 'unknown'}); nothing "
            "was copied: let that run finish (or stop it), then rerun the phase"
        )
    try:
        yield
    finally:
        with contextlib.suppress(DatabaseError):  # a dead connection took the lock with it
            db.execute("SELECT pg_advisory_unlock(%s, %s)", key)


def _check_fence(copy: TableCopy, part: int | None = None) -> None:
    """Inside a batch's transaction: this connection still holds the copy's table (or range) fence."""
    held = db.fetchvalue(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted "
        "AND classid = %s AND objid = %s AND objsubid = 2)",
        _fence_key(copy.target_schema, copy.target_table, part),
    )
    if not held:
        raise MigrationError(
            f"{copy.target_schema}.{copy.target_table}: this run's database connection changed in the middle of the "
            "copy and no longer holds the table's lock; it stopped, every committed batch is kept: rerun the phase"
        )


def source_rows_up_to(copy: TableCopy, limit: int) -> int:
    """The source's row count, counted no further than ``limit``."""
    return int(
        db.fetchvalue(sql.SQL("SELECT count(*) FROM (SELECT FROM {} LIMIT %s) s").format(copy.source_rows), [limit])
    )


def _lowest_key(copy: TableCopy) -> list[object]:
    return [-(2**63) for _ in copy.key]


def _last_copied_key(copy: TableCopy) -> list[object] | None:
    order = sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(k)) for k in copy.key)
    row = db.fetchone(
        sql.SQL("SELECT {keys} FROM {t} ORDER BY {order} LIMIT 1").format(
            keys=db.ident_list(copy.key), t=copy.target, order=order
        )
    )
    return list(row) if row else None


def mapping_proven(copy: TableCopy, remap: Remap) -> bool:
    """Whether the catalog proves that every source value of ``remap.column`` has a merged id
    (:func:`unmapped_references` then reads no source row for that column).

    It does when a validated foreign key ties the column to the id of the legacy reference table
    the map was built from (so every value is one of its ids), and every id of that small table
    has a map entry. Then no source row needs to be read to know none is unmapped.
    """
    return bool(
        db.fetchvalue(
            sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint c "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
                "JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1] "
                "WHERE c.contype = 'f' AND c.convalidated AND cardinality(c.conkey) = 1 "
                "AND c.conrelid = {oid} AND a.attname = %s "
                "AND c.confrelid = {oid} AND ra.attname = 'id') "
                "AND NOT EXISTS (SELECT 1 FROM {ref} l WHERE NOT EXISTS (SELECT 1 FROM public.migrator_reference_map m "
                "WHERE m.tenant_id = %s AND m.reference_table = %s AND m.old_id = l.id))"
            ).format(ref=copy.legacy_reference_rows(remap), oid=catalog.RELATION_OID),
            [
                copy.source_schema,
                copy.source_table,
                remap.column,
                copy.source_schema,
                remap.reference_table,
                remap.tenant_id,
                remap.reference_table,
            ],
        )
    )


def _scan_source(copy: TableCopy) -> tuple[int, dict[str, int]]:
    """Source row count and, per remapped column, the rows whose reference id has no merged id.

    Columns the catalog proves mapped (:func:`mapping_proven`) cost nothing; the others are counted
    in the same scan as the rows, through the joins the batches use (the map is unique per old id,
    so they never multiply rows).
    """
    unproven = tuple(
        r
        for r in copy.remaps
        if not (copy.schema_catalog.table_exists(copy.source_schema, r.reference_table) and mapping_proven(copy, r))
    )
    unmapped = copy.unmapped_counts(unproven)
    row = db.fetchone(
        sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join([sql.SQL("count(*)"), *unmapped]), copy.from_clause(unproven)
        )
    )
    total, *missing = row or (0,)
    return int(total), {r.column: int(n) for r, n in zip(unproven, missing, strict=False) if n}


def _dangling(copy: TableCopy, remap: Remap, sample: int = 5) -> tuple[int, list[object]]:
    """Source rows whose ``remap.column`` holds an id of no row of the legacy reference table, and some of those ids."""
    if not copy.schema_catalog.table_exists(copy.source_schema, remap.reference_table):
        query = sql.SQL("SELECT count(*), (array_agg(DISTINCT s.{c}))[1:%s] FROM {src} s WHERE s.{c} IS NOT NULL")
    else:
        query = sql.SQL(
            "SELECT count(*), (array_agg(DISTINCT s.{c}))[1:%s] FROM {src} s WHERE s.{c} IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM {ref} r WHERE r.id = s.{c})"
        )
    count, ids = db.fetchone(
        query.format(
            c=sql.Identifier(remap.column),
            src=copy.source_rows,
            ref=copy.legacy_reference_rows(remap),
        ),
        [sample],
    ) or (0, [])
    return int(count), list(ids or [])


def _refuse_unmapped(copy: TableCopy, missing: dict[str, int]) -> None:
    """Say why rows have no merged reference id: an id that points at nothing is the legacy data's to fix."""
    for remap in copy.remaps:
        if remap.column not in missing:
            continue
        dangling, ids = _dangling(copy, remap)
        if dangling:
            raise MigrationError(
                f"{dangling} rows of {copy.source_schema}.{copy.source_table}.{remap.column} point at no row of "
                f"{copy.source_schema}.{remap.reference_table} (ids {', '.join(map(str, ids))}); nothing was copied: "
                "point them at an existing row or set them to NULL in the legacy table, then rerun the phase"
            )
    details = ", ".join(f"{n} rows of {copy.source_table}.{c}" for c, n in missing.items())
    raise MigrationError(
        f"{details} point at reference rows with no merged id; rerun `migrate_phase data`, which merges them"
    )


def unmapped_references(copy: TableCopy) -> dict[str, int]:
    """Source rows whose reference id has no entry in the map (they would lose their reference)."""
    return _scan_source(copy)[1]


@dataclass
class CopyStats:
    rows_source: int
    rows_copied: int
    batches: int
    resumed_after: list[object] | None
    ranges: int = 0  # the key ranges it was copied in (0: whole)


SILENT = StepReporter()  # a copy nobody watches (tests, tools)


def copy_table(
    copy: TableCopy, batch_size: int, reporter: StepReporter = SILENT, fence_held: bool = False
) -> CopyStats:
    """Copy every source row not yet in the target, in key order, one committed batch at a time.

    ``reporter.checkpoint`` runs inside each batch's transaction, so what it stores commits with the batch.
    Exactly once does not rest on the migrator lock alone: the copy holds the table's fence
    (:func:`table_fence`; ``fence_held``: the caller holds it already, on this connection) from before
    it reads where to resume until its last batch, and every batch checks it and ``reporter.fence``
    first, so two runners can never both write the table.
    """
    if fence_held:
        return _copy_table(copy, batch_size, reporter)
    with table_fence(copy.target_schema, copy.target_table):
        return _copy_table(copy, batch_size, reporter)


def source_rows_checked(copy: TableCopy) -> int:
    """The source's row count, once every row is known to fit (refused otherwise: a value the target
    cannot hold exactly, a reference id with no merged id). Every run, a resumed one too: legacy rows
    may have changed since the last."""
    refuse_inexact_conversions(copy)
    total, missing = _scan_source(copy)
    if missing:
        _refuse_unmapped(copy, missing)
    return total


def _copy_table(copy: TableCopy, batch_size: int, reporter: StepReporter, total: int | None = None) -> CopyStats:
    total = source_rows_checked(copy) if total is None else total
    resumed_after = _last_copied_key(copy)
    last = resumed_after or _lowest_key(copy)
    done = copy.schema_catalog.row_count(copy.target_schema, copy.target_table) if resumed_after else 0
    one_batch = (
        resumed_after is None and 0 < total <= min(batch_size, ONE_STATEMENT_BELOW_ROWS - 1) and len(copy.key) == 1
    )
    if not one_batch:  # a copy of one batch records its expected rows with that batch (one commit less)
        reporter.expected(total)
    reporter.progress(done, total)
    key_order = sql.SQL(", ").join(sql.Identifier(k) for k in copy.key)
    key_order_desc = sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(k)) for k in copy.key)
    upper_sql = sql.SQL("SELECT {keys} FROM {src} s WHERE {key} > {lo} ORDER BY {order} OFFSET %s LIMIT 1").format(
        keys=db.ident_list(copy.key), src=copy.source_rows, key=copy.key_row(), lo=copy.key_params(), order=key_order
    )
    # The last batch ends at the source's highest key, so every checkpoint comes from the source's
    # key index, never from a scan of the target (whose primary key may be deferred during the load).
    highest_sql = sql.SQL("SELECT {keys} FROM {src} s WHERE {key} > {lo} ORDER BY {order} LIMIT 1").format(
        keys=db.ident_list(copy.key),
        src=copy.source_rows,
        key=copy.key_row(),
        lo=copy.key_params(),
        order=key_order_desc,
    )
    bounded = db.render(copy.insert_batch_sql(bounded=True))
    batches = 0
    if one_batch:
        # The whole table in one batch: one statement copies it and returns its highest key (the
        # checkpoint), instead of two key lookups before the batch and two more to find the end.
        with transaction.atomic():
            reporter.fence()
            _check_fence(copy)
            db.execute(ASYNC_COMMIT)
            reporter.expected(total)
            copied, highest = db.fetchone(
                sql.SQL("WITH copied AS ({insert} RETURNING {key}) SELECT count(*), max({key}) FROM copied").format(
                    insert=copy.insert_batch_sql(bounded=False), key=sql.Identifier(copy.key[0])
                ),
                last,
            ) or (0, None)
            done += int(copied)
            reporter.checkpoint(highest, done)
        if highest is not None:
            batches = 1
            last = [highest]
            reporter.progress(done, total)
    while not one_batch:
        upper = db.fetchone(upper_sql, [*last, batch_size - 1])
        if upper is None:  # the rest fits in one batch
            upper = db.fetchone(highest_sql, list(last))
            if upper is None:
                break
        with transaction.atomic():
            reporter.fence()
            _check_fence(copy)
            db.execute(ASYNC_COMMIT)  # see the module docstring: a lost batch is recopied, never half-kept
            done += db.execute(bounded, [*last, *upper])
            reporter.checkpoint(upper[0] if len(copy.key) == 1 else None, done)
        batches += 1
        reporter.progress(done, total)
        last = list(upper)
    key = last[0] if len(copy.key) == 1 and (resumed_after or batches) else None
    total, done = _copy_missing(copy, total, done, key if isinstance(key, int) else None, reporter)
    return CopyStats(rows_source=total, rows_copied=done, batches=batches, resumed_after=resumed_after)


def _copy_missing(
    copy: TableCopy, total: int, done: int, checkpoint: int | None, reporter: StepReporter
) -> tuple[int, int]:
    """(source rows, rows copied) once the batches are done: the same as before when they match."""
    if done != total:
        # The legacy table changed while it was copied: rows written above the progress were copied
        # by the batches; rows written below it (after the copy passed their key) only a pass over
        # the keys missing from the target finds. Only a mismatch pays for that scan.
        total = copy.schema_catalog.row_count(copy.source_schema, copy.source_table)
        reporter.expected(total)
        if done < total:
            with transaction.atomic():
                reporter.fence()
                _check_fence(copy)
                db.execute(ASYNC_COMMIT)
                done += db.execute(copy.insert_missing_sql())
                reporter.checkpoint(checkpoint, done)
            reporter.progress(done, total)
    return total, done


MAX_KEY = 2**63 - 1


def copy_in_ranges(
    copy: TableCopy, batch_size: int, reporter: StepReporter, plan: Callable[[int], list[KeyRange]]
) -> CopyStats:
    """Copy a large table range by range, or whole when ``plan`` splits it into fewer than two ranges.

    ``plan(source rows)`` splits the single integer key into ranges; the engine records them once and
    runs them on the run's free connections (``reporter.ranges``), each in keyset batches that commit
    with the range's own checkpoint. The caller holds the table's fence; each range takes its own.
    A rerun follows the recorded plan, whatever ``plan`` would say now.
    """
    total = source_rows_checked(copy)

    def plan_now() -> list[KeyRange]:
        # Rows already in the target came from a copy of the whole table (killed): it resumes as such.
        return [] if _has_rows(copy.target) else plan(total)

    def work(key_range: KeyRange, range_reporter: StepReporter) -> StepResult:
        return _copy_range(copy, key_range, batch_size, range_reporter)

    results = reporter.ranges(COPY_RANGE, plan_now, work, True)
    if results is None:
        return _copy_table(copy, batch_size, reporter, total)
    reporter.expected(total)
    done = sum(result.rows_copied or 0 for _r, result in results)
    batches = sum(int(read_details(CopyRangeDetails, result.details).get("batches", 0)) for _r, result in results)
    resumed: list[object] = [r.resume_after for r, _result in results if r.resume_after is not None]
    total, done = _copy_missing(copy, total, done, None, reporter)
    reporter.progress(done, total)
    return CopyStats(
        rows_source=total, rows_copied=done, batches=batches, resumed_after=resumed or None, ranges=len(results)
    )


def _has_rows(table: sql.Composable) -> bool:
    return bool(db.fetchvalue(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(table)))


def _copy_range(copy: TableCopy, key_range: KeyRange, batch_size: int, reporter: StepReporter) -> StepResult:
    """The keys of ``key_range`` not yet copied, in keyset batches; each commits with the range's checkpoint."""
    (key,) = copy.key
    through = MAX_KEY if key_range.through is None else key_range.through
    last = key_range.resume_after if key_range.resume_after is not None else key_range.after
    last = -(2**63) if last is None else last
    done = key_range.rows_done
    next_upper = sql.SQL(
        "SELECT s.{k} FROM {src} s WHERE s.{k} > %s AND s.{k} <= %s ORDER BY s.{k} OFFSET %s LIMIT 1"
    ).format(k=sql.Identifier(key), src=copy.source_rows)
    highest = sql.SQL("SELECT max(s.{k}) FROM {src} s WHERE s.{k} > %s AND s.{k} <= %s").format(
        k=sql.Identifier(key), src=copy.source_rows
    )
    bounded = db.render(copy.insert_batch_sql(bounded=True))
    batches = 0
    with table_fence(copy.target_schema, copy.target_table, part=key_range.index):
        while True:
            upper = db.fetchvalue(next_upper, [last, through, batch_size - 1])
            if upper is None:  # the rest of the range fits in one batch
                upper = db.fetchvalue(highest, [last, through])
                if upper is None:
                    break
            with transaction.atomic():
                reporter.fence()
                _check_fence(copy, part=key_range.index)
                db.execute(ASYNC_COMMIT)  # as every batch (see the module docstring)
                done += db.execute(bounded, [last, upper])
                reporter.checkpoint(upper, done)
            batches += 1
            reporter.progress(done, key_range.rows_planned)
            last = upper
    return StepResult(
        message=f"{done} rows in {batches} batches",
        rows_expected=key_range.rows_planned,
        rows_copied=done,
        details=CopyRangeDetails(batches=batches, resumed_after=key_range.resume_after),
    )


def last_issued(sequence: tuple[str, str] | None) -> tuple[sql.Composable, list[str]]:
    """An expression for the highest value ``sequence`` has issued, with its parameters: its last value
    once called; before that (new, or set with ``setval(..., false)``) the value before the one it
    would issue next; for a descending sequence, its start. NULL for no sequence."""
    if sequence is None:
        return sql.SQL("NULL::bigint"), []
    return (
        sql.SQL(
            "(SELECT CASE WHEN q.seqincrement < 0 THEN q.seqstart WHEN s.is_called THEN s.last_value "
            "ELSE s.last_value - q.seqincrement END FROM {seq} s, pg_sequence q WHERE q.seqrelid = {oid})"
        ).format(seq=sql.Identifier(*sequence), oid=catalog.RELATION_OID),
        list(sequence),
    )


def continue_sequence(
    schema: str, table: str, column: str = "id", legacy: tuple[str, str] | None = None
) -> SequenceDetails:
    """Make the sequence feeding ``schema.table.column`` continue after every id ever issued for it.

    That is the greatest of: the table's highest id; what its own sequence issued already (it never
    moves back); and, for a table whose rows keep their legacy ids, what the sequence of the legacy
    table ``legacy`` (same column) issued: rows deleted from the legacy table took their ids with them,
    but those ids were issued once and may be known elsewhere. A legacy sequence shared by several
    tables counts whole. Returns what was used, for the step's details; nothing when no sequence
    feeds the column.
    """
    sequence = catalog.column_sequence(schema, table, column)
    if sequence is None:
        return {}
    legacy_sequence = catalog.column_sequence(*legacy, column) if legacy else None
    own, own_params = last_issued(sequence)
    legacy_last, legacy_params = last_issued(legacy_sequence)
    legacy_value, after = db.fetchone(
        sql.SQL(
            "SELECT legacy_last, setval({oid}, greatest(highest_id, own_last, legacy_last, 0) + 1, false) - 1 "
            "FROM (SELECT (SELECT max({c}) FROM {t}) AS highest_id, {own} AS own_last, {legacy} AS legacy_last) x"
        ).format(
            oid=catalog.RELATION_OID,
            c=sql.Identifier(column),
            t=sql.Identifier(schema, table),
            own=own,
            legacy=legacy_last,
        ),
        [*sequence, *own_params, *legacy_params],
    ) or (None, 0)
    details = SequenceDetails(sequence_continues_after=after)
    if legacy is not None:
        details["legacy_sequence_last_value"] = legacy_value
    return details


# ``vacuumdb --analyze-in-stages`` starts with targets 1 and 10: usable plans at once, for a sample of
# 300 x target rows instead of 30,000. On a 50k-row table that is 12 ms instead of 150 ms, the whole
# sample being sorted per column (text and jsonb comparisons dominate).
QUICK_STATISTICS_TARGET = 10


def analyze(
    schema: str,
    table: str,
    statistics_target: int | None = QUICK_STATISTICS_TARGET,
    schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ,
) -> None:
    """Planner statistics for a freshly loaded table: every column, quickly, unless ``statistics_target`` is None.

    The quick pass names its columns, and an ANALYZE with a column list leaves the table's
    modification counter alone, so autovacuum still runs its own full ANALYZE soon after the load
    (the last stage of analyze-in-stages). Where autovacuum is off, gather the full statistics
    before going live: ``analyze(schema, table, None)`` (the server's default target) or
    ``vacuumdb --analyze-only``. Expression-index statistics need a plain ANALYZE, so a table with
    an expression index gets one at the quick target.
    """
    target = sql.Identifier(schema, table)
    if statistics_target is None:
        db.execute(sql.SQL("ANALYZE {}").format(target))
        return
    columns = [c.name for c in schema_catalog.columns(schema, table)]
    with_expressions = db.fetchvalue(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = {oid} AND x.indexprs IS NOT NULL)").format(
            oid=catalog.RELATION_OID
        ),
        [schema, table],
    )
    query = sql.SQL("ANALYZE {}").format(target)
    if columns and not with_expressions:
        query = sql.SQL("ANALYZE {} ({})").format(target, db.ident_list(columns))
    with transaction.atomic(), db.local_settings(default_statistics_target=str(statistics_target)):
        db.execute(query)
