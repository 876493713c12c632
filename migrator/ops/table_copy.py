"""What a copy of one table is: its source and target, key, columns, remapped references, legacy time
zone and the columns whose types differ, and the SQL of its batches (rows are moved by
:mod:`migrator.ops.copy`; conversions checked by :mod:`migrator.ops.conversions`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from migrator import catalog, db
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
