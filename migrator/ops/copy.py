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
from dataclasses import dataclass

from django.db import DatabaseError, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.core.details import CopyRangeDetails, read_details
from migrator.core.errors import MigrationError
from migrator.core.steps import COPY_RANGE, KeyRange, StepReporter, StepResult
from migrator.ops.conversions import refuse_inexact_conversions
from migrator.ops.table_copy import Remap, TableCopy

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
