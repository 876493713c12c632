"""Moving rows between tables of one database: keyset batches of ``INSERT ... SELECT``.

Each batch and its checkpoint commit in one transaction, so a run killed at any moment resumes
from the last committed batch with no duplicate and no gap. The target table itself is the
checkpoint (rows are copied in key order), and the tracking row mirrors it for operators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import transaction
from psycopg import sql

from migrator import catalog, db
from migrator.engine import tracking
from migrator.engine.errors import MigrationError


@dataclass(frozen=True)
class Remap:
    """``column`` holds ids of a merged reference table: translate them through the reference map."""

    column: str
    tenant_id: str
    reference_table: str


@dataclass(frozen=True)
class TableCopy:
    """Copy ``source`` into ``target``: same column names, ``remaps`` translated, keyed by ``key``."""

    source_schema: str
    source_table: str
    target_schema: str
    target_table: str
    columns: tuple[str, ...]
    key: tuple[str, ...] = ("id",)
    remaps: tuple[Remap, ...] = field(default_factory=tuple)

    @property
    def source(self) -> sql.Identifier:
        return sql.Identifier(self.source_schema, self.source_table)

    @property
    def target(self) -> sql.Identifier:
        return sql.Identifier(self.target_schema, self.target_table)

    def _remap_alias(self, remap: Remap) -> sql.Identifier:
        return sql.Identifier("map_" + remap.column)

    def select_list(self) -> sql.Composed:
        """Source expressions in target column order, remapped columns taken from the map."""
        remapped = {r.column: r for r in self.remaps}
        return sql.SQL(", ").join(
            sql.SQL("{}.new_id").format(self._remap_alias(remapped[c])) if c in remapped
            else sql.SQL("s.{}").format(sql.Identifier(c))
            for c in self.columns
        )

    def from_clause(self) -> sql.Composed:
        joins = [
            sql.SQL(" LEFT JOIN public.migrator_reference_map {a} ON {a}.tenant_id = {t} "
                    "AND {a}.reference_table = {r} AND {a}.old_id = s.{c}").format(
                a=self._remap_alias(r), t=sql.Literal(r.tenant_id), r=sql.Literal(r.reference_table),
                c=sql.Identifier(r.column))
            for r in self.remaps
        ]
        return sql.SQL("{} s").format(self.source) + sql.Composed(joins)

    def key_row(self, alias: str = "s") -> sql.Composed:
        return sql.SQL("({})").format(sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(k)) for k in self.key))

    def key_params(self) -> sql.Composed:
        return sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() for _ in self.key))

    def insert_batch_sql(self, bounded: bool) -> sql.Composed:
        """Rows after the last copied key, up to and including an upper key when ``bounded``."""
        query = sql.SQL("INSERT INTO {target} ({cols}) SELECT {select} FROM {src} WHERE {key} > {lo}").format(
            target=self.target, cols=db.ident_list(self.columns), select=self.select_list(),
            src=self.from_clause(), key=self.key_row(), lo=self.key_params())
        if bounded:
            query += sql.SQL(" AND {key} <= {hi}").format(key=self.key_row(), hi=self.key_params())
        return query

    def preview(self) -> str:
        return db.render(self.insert_batch_sql(bounded=True))


def _lowest_key(copy: TableCopy) -> list[object]:
    return [-(2**63) for _ in copy.key]


def _last_copied_key(copy: TableCopy) -> list[object] | None:
    order = sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(k)) for k in copy.key)
    row = db.fetchone(sql.SQL("SELECT {keys} FROM {t} ORDER BY {order} LIMIT 1").format(
        keys=db.ident_list(copy.key), t=copy.target, order=order))
    return list(row) if row else None


def unmapped_references(copy: TableCopy) -> dict[str, int]:
    """Source rows whose reference id has no entry in the map (they would lose their reference)."""
    missing = {}
    for remap in copy.remaps:
        count = db.fetchvalue(
            sql.SQL("SELECT count(*) FROM {src} s WHERE s.{c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
                    "public.migrator_reference_map m WHERE m.tenant_id = %s AND m.reference_table = %s "
                    "AND m.old_id = s.{c})").format(src=copy.source, c=sql.Identifier(remap.column)),
            [remap.tenant_id, remap.reference_table],
        )
        if count:
            missing[remap.column] = int(count)
    return missing


@dataclass
class CopyStats:
    rows_source: int
    rows_copied: int
    batches: int
    resumed_after: list[object] | None


def copy_table(copy: TableCopy, batch_size: int, record_id: int | None,
               progress: Callable[[int, int | None], None] = lambda done, total: None) -> CopyStats:
    """Copy every source row not yet in the target, in key order, one committed batch at a time."""
    missing = unmapped_references(copy)
    if missing:
        details = ", ".join(f"{n} rows of {copy.source_table}.{c}" for c, n in missing.items())
        raise MigrationError(f"{details} point at reference rows with no merged id; rerun the merge_reference steps")
    total = catalog.row_count(copy.source_schema, copy.source_table)
    resumed_after = _last_copied_key(copy)
    last = resumed_after or _lowest_key(copy)
    done = catalog.row_count(copy.target_schema, copy.target_table) if resumed_after else 0
    progress(done, total)
    key_order = sql.SQL(", ").join(sql.Identifier(k) for k in copy.key)
    upper_sql = sql.SQL("SELECT {keys} FROM {src} s WHERE {key} > {lo} ORDER BY {order} OFFSET %s LIMIT 1").format(
        keys=db.ident_list(copy.key), src=copy.source, key=copy.key_row(), lo=copy.key_params(), order=key_order)
    bounded = db.render(copy.insert_batch_sql(bounded=True))
    unbounded = db.render(copy.insert_batch_sql(bounded=False))
    batches = 0
    while True:
        upper = db.fetchone(upper_sql, [*last, batch_size - 1])
        with transaction.atomic():
            if upper is None:  # the rest fits in one batch
                inserted = db.execute(unbounded, list(last))
            else:
                inserted = db.execute(bounded, [*last, *upper])
            done += inserted
            if upper is not None:
                checkpoint = upper
            else:
                checkpoint = _last_copied_key(copy) or last
            if record_id is not None:
                tracking.save_checkpoint(record_id, checkpoint[0] if len(copy.key) == 1 else None, done)
        batches += 1
        progress(done, total)
        if upper is None:
            break
        last = list(upper)
    return CopyStats(rows_source=total, rows_copied=done, batches=batches, resumed_after=resumed_after)


def reset_identity(schema: str, table: str, column: str = "id") -> int | None:
    """Make the table's identity/serial sequence continue after the highest copied id."""
    return db.fetchvalue(
        sql.SQL("SELECT setval(pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), %s), "
                "coalesce(max({c}), 0) + 1, false) FROM {t}").format(c=sql.Identifier(column), t=sql.Identifier(schema, table)),
        [schema, table, column],
    )


def analyze(schema: str, table: str) -> None:
    db.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
