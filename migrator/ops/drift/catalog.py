"""The drift report's catalog reads: the shape the registry expects of each legacy tenant table, and what
each tenant schema really holds (many schemas per query)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.apps import apps
from django.db import connection, models
from psycopg import sql

from migrator import db
from migrator.tables import LEGACY_TENANT_TABLES, legacy_table, legacy_tenant_model

# --- the expected shape -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedColumn:
    name: str
    data_type: str  # as format_type() spells it
    nullable: bool


@dataclass(frozen=True)
class ExpectedTable:
    name: str
    columns: dict[str, ExpectedColumn]
    key: tuple[str, ...]
    unique: frozenset[tuple[str, ...]]  # column lists the target keeps unique (primary key included)
    indexed: frozenset[tuple[str, ...]]  # column lists the target has an index on
    foreign_keys: frozenset[str]  # columns the target keeps a foreign key on
    remapped: frozenset[str]  # columns holding reference ids, translated to the shared ids on the way


_DJANGO_TYPE_SPELLING = {
    "varchar": "character varying",
    "char": "character",
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
    "double": "double precision",
    "int": "integer",
    "int4": "integer",
    "int8": "bigint",
    "int2": "smallint",
    "bool": "boolean",
}


def format_type_spelling(db_type: str) -> str:
    """A Django ``db_type`` as PostgreSQL's ``format_type`` spells it (``varchar(20)`` ->
    ``character varying(20)``, ``numeric(10, 2)`` -> ``numeric(10,2)``)."""
    match = re.fullmatch(r"\s*([a-z0-9_ ]+?)\s*(\(([^)]*)\))?\s*", db_type.lower())
    if match is None:
        return db_type
    name = _DJANGO_TYPE_SPELLING.get(match.group(1), match.group(1))
    if match.group(3) is None:
        return name
    return f"{name}({','.join(part.strip() for part in match.group(3).split(','))})"


def _field_columns(model: type[models.Model], names: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(getattr(model._meta.get_field(name), "column", name)) for name in names)


@cache
def expected_tables() -> dict[str, ExpectedTable]:
    """The legacy tenant tables' expected shape: the target model's columns (the target keeps legacy names
    and types), the registry's key, and the uniqueness, indexes and foreign keys the target has."""
    found: dict[str, ExpectedTable] = {}
    for name in LEGACY_TENANT_TABLES:
        model = apps.get_model(legacy_tenant_model(name))
        entry = legacy_table(name)
        columns: dict[str, ExpectedColumn] = {}
        unique: set[tuple[str, ...]] = {tuple(entry.key)}
        indexed: set[tuple[str, ...]] = {tuple(entry.key)}
        foreign_keys: set[str] = set(entry.remap)
        for model_field in model._meta.local_fields:
            column = str(model_field.column)
            columns[column] = ExpectedColumn(
                column, format_type_spelling(str(model_field.db_type(connection))), bool(model_field.null)
            )
            if model_field.unique:
                unique.add((column,))
            if model_field.db_index or model_field.unique:
                indexed.add((column,))
            if model_field.many_to_one:
                foreign_keys.add(column)
        for together in model._meta.unique_together:
            unique.add(_field_columns(model, together))
        for constraint in model._meta.constraints:
            if isinstance(constraint, models.UniqueConstraint) and constraint.fields and constraint.condition is None:
                unique.add(_field_columns(model, constraint.fields))
        for index in model._meta.indexes:
            if index.fields:
                indexed.add(_field_columns(model, [f.lstrip("-") for f in index.fields]))
        found[name] = ExpectedTable(
            name,
            columns,
            tuple(entry.key),
            frozenset(unique),
            frozenset(indexed | unique),
            frozenset(foreign_keys),
            frozenset(entry.remap),
        )
    return found


# --- what is there --------------------------------------------------------------------------------


@dataclass
class Relation:
    oid: int
    schema: str
    name: str
    relkind: str  # 'r' table, 'p' partitioned
    unlogged: bool
    is_partition: bool
    parent: str | None  # inheritance parent's name (not for partitions)
    columns: list[dict[str, Any]] = field(default_factory=list)
    constraints: list[dict[str, Any]] = field(default_factory=list)
    indexes: list[dict[str, Any]] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    sequence: SequenceFacts | None = None  # of its ``id`` column


def relations_of(schemas: list[str]) -> list[Relation]:
    # Every relation depends on its schema: pg_depend's index on the referenced object finds a
    # schema's relations without reading every tenant's (pg_class has no index on relnamespace).
    rows = db.fetchall(
        "SELECT c.oid::bigint, s.nspname, c.relname, c.relkind, c.relpersistence = 'u', c.relispartition, "
        "  (SELECT p.relname FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
        "   WHERE i.inhrelid = c.oid AND NOT c.relispartition LIMIT 1), "
        "  (SELECT p.relname FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
        "   WHERE i.inhrelid = c.oid AND c.relispartition LIMIT 1) "
        "FROM unnest(%s::text[]) s(nspname) "
        "JOIN pg_depend d ON d.refclassid = 'pg_namespace'::regclass "
        "AND d.refobjid = to_regnamespace(quote_ident(s.nspname)) AND d.refobjsubid = 0 "
        "AND d.classid = 'pg_class'::regclass "
        "JOIN pg_class c ON c.oid = d.objid WHERE c.relkind IN ('r', 'p') ORDER BY s.nspname, c.relname",
        [schemas],
    )
    relations = []
    partitions_of: dict[tuple[str, str], list[str]] = {}
    for oid, schema, name, relkind, unlogged, is_partition, parent, partition_of in rows:
        relations.append(Relation(oid, schema, name, relkind, unlogged, is_partition, parent))
        if partition_of is not None:
            partitions_of.setdefault((schema, partition_of), []).append(name)
    for relation in relations:
        relation.partitions = partitions_of.get((relation.schema, relation.name), [])
    return relations


def read_details(relations: list[Relation]) -> None:
    """Columns, constraints and indexes of ``relations``, three queries for all of them."""
    by_oid = {r.oid: r for r in relations}
    if not by_oid:
        return
    oids = list(by_oid)
    for row in db.fetchall(
        "SELECT a.attrelid::bigint, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
        "  pg_get_expr(ad.adbin, ad.adrelid), a.attgenerated <> '', a.attidentity <> '', t.typtype, "
        "  CASE WHEN a.attcollation <> t.typcollation THEN co.collname END, "
        "  (SELECT count(*) FROM pg_constraint dc WHERE dc.contypid = a.atttypid)::int, a.atttypid::bigint "
        "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum "
        "LEFT JOIN pg_collation co ON co.oid = a.attcollation "
        "WHERE a.attrelid = ANY(%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attrelid, a.attnum",
        [oids],
    ):
        oid, name, data_type, not_null, default, generated, identity, typtype, collation, domain_checks, type_oid = row
        by_oid[oid].columns.append(
            {
                "name": name,
                "type": data_type,
                "nullable": not not_null,
                "default": default,
                "generated": generated,
                "identity": identity,
                "typtype": typtype,
                "collation": collation,
                "domain_checks": domain_checks,
                "type_oid": type_oid,
            }
        )
    for oid, name, contype, definition, columns in db.fetchall(
        "SELECT c.conrelid::bigint, c.conname, c.contype, pg_get_constraintdef(c.oid), "
        "  ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i) "
        "        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i)::text[] "
        "FROM pg_constraint c WHERE c.conrelid = ANY(%s::oid[]) AND c.contype IN ('p', 'u', 'c', 'x', 'f') "
        "AND c.conparentid = 0 ORDER BY c.conrelid, c.conname",
        [oids],
    ):
        by_oid[oid].constraints.append({"name": name, "type": contype, "definition": definition, "columns": columns})
    for oid, name, unique, primary, constraint, definition, columns, partial in db.fetchall(
        "SELECT x.indrelid::bigint, i.relname, x.indisunique, x.indisprimary, "
        "  EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.conrelid = x.indrelid), "
        "  pg_get_indexdef(x.indexrelid), "
        "  CASE WHEN x.indexprs IS NULL THEN ARRAY(SELECT a.attname FROM unnest(x.indkey::int2[]) "
        "    WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n "
        "    WHERE k.i <= x.indnkeyatts ORDER BY k.i)::text[] END, x.indpred IS NOT NULL "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = ANY(%s::oid[]) "
        "ORDER BY x.indrelid, i.relname",
        [oids],
    ):
        by_oid[oid].indexes.append(
            {
                "name": name,
                "unique": unique,
                "primary": primary,
                "constraint": constraint,
                "definition": definition,
                "columns": columns,
                "partial": partial,
            }
        )


@dataclass(frozen=True)
class SequenceFacts:
    name: str
    last_value: int | None
    max_id: int | None
    shared_with: tuple[str, ...]  # other tables whose defaults draw from it


# Per table: the sequence behind its ``id`` (identity or serial: the sequence depends on the column;
# a nextval() default: the default depends on the sequence), its last issued value, and the other
# tables whose defaults draw from it. All keyed lookups on pg_depend's indexes.
_SEQUENCES_SQL = """
SELECT a.attrelid::bigint, s.oid::regclass::text, pg_sequence_last_value(s.oid),
       ARRAY(SELECT DISTINCT format('%%I.%%I', n.nspname, c.relname) FROM pg_depend d
             JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
             JOIN pg_class c ON c.oid = ad.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = s.oid AND ad.adrelid <> a.attrelid)::text[]
  FROM pg_attribute a
  CROSS JOIN LATERAL (
    SELECT d.objid AS oid FROM pg_depend d
     WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum
       AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
    UNION ALL
    SELECT d.refobjid FROM pg_attrdef ad
      JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
       AND d.refclassid = 'pg_class'::regclass
      JOIN pg_class sc ON sc.oid = d.refobjid AND sc.relkind = 'S'
     WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    LIMIT 1) s
 WHERE a.attrelid = ANY(%s::oid[]) AND a.attname = 'id' AND NOT a.attisdropped
"""


def read_sequences(relations: list[Relation]) -> dict[int, SequenceFacts]:
    """The ``id`` sequence of each of ``relations`` that has one: two queries for all of them (the highest
    ids are read only for sequences that issued any)."""
    if not relations:
        return {}
    names = {r.oid: r for r in relations}
    found = db.fetchall(_SEQUENCES_SQL, [list(names)])
    issued = [(oid, names[oid]) for oid, _seq, last_value, _shared in found if last_value is not None]
    highest: dict[int, int | None] = {}
    if issued:
        row = db.fetchone(
            sql.SQL("SELECT {}").format(
                sql.SQL(", ").join(
                    sql.SQL("(SELECT max(id)::bigint FROM ONLY {})").format(sql.Identifier(r.schema, r.name))
                    for _oid, r in issued
                )
            )
        )
        highest = dict(zip((oid for oid, _r in issued), row or (), strict=True))
    return {
        oid: SequenceFacts(name, last_value, highest.get(oid), tuple(shared)) for oid, name, last_value, shared in found
    }


def count_rows(query: sql.Composable) -> int:
    return int(db.fetchvalue(query) or 0)
