"""Drift: every way a tenant's legacy tables differ from the shape the table registry expects.

A ten-year-old database is not uniform: tenants created by different releases, patched by hand,
"optimised" by a DBA. Phase 1 inspects every tenant schema before anything changes and classifies
each difference (a :class:`Finding`):

- ``CARRIED``: the migrator carries it over exactly (a partitioned table, a CHECK constraint, an
  integer widened to bigint whose every value is checked before copying, a sequence ahead of max(id));
- ``DECISION``: it cannot be carried exactly and an explicit option says what to do (a table named
  ``"Contacts"``, an unknown table holding rows, a legacy-only foreign key); given that option, the
  finding is ``DECIDED`` and records the option;
- ``REFUSED``: the tenant cannot be migrated as it is (a legacy column with no target column, a
  target column with no legacy column, an inheritance child holding rows, NULLs a NOT NULL target
  column refuses); the remedy is to fix the legacy table or leave the tenant out with
  ``--skip-schema``.

The catalog is read for many schemas per query (:data:`SCHEMAS_PER_QUERY`); only the rare drifted
columns cost a look at their values. Nothing here changes the database.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.apps import apps
from django.db import connection, models
from psycopg import sql

from migrator import db
from migrator.models import Disposition, FindingKind
from migrator.ops.copy import TIMESTAMP_OID, TIMESTAMPTZ_OID, TableCopy, TypeDifference, inexact_values
from migrator.tables import LEGACY_TENANT_TABLES, legacy_table, legacy_tenant_model, tenant_table_names

SCHEMAS_PER_QUERY = 200
SCHEMA_PLACEHOLDER = "tenant_<id>"  # a tenant's schema in a finding grouped across tenants


@dataclass(frozen=True)
class Finding:
    schema: str
    table: str
    kind: FindingKind
    object_name: str = ""
    detail: str = ""
    disposition: Disposition = Disposition.CARRIED
    action: str = ""
    decided_by: str = ""

    def line(self) -> str:
        """One line for an operator: where, what, and what happens or what to do."""
        where = f"{self.schema}.{self.table}" + (f".{self.object_name}" if self.object_name else "")
        text = f"{where}: {self.kind}" + (f" ({self.detail})" if self.detail else "")
        return f"{text} -- {self.disposition.label}: {self.action}" if self.action else text

    @property
    def blocks(self) -> bool:
        return self.disposition in (Disposition.DECISION, Disposition.REFUSED)

    def as_dict(self) -> dict[str, str]:
        return {
            "schema": self.schema,
            "table": self.table,
            "kind": str(self.kind),
            "object": self.object_name,
            "detail": self.detail,
            "disposition": str(self.disposition),
            "action": self.action,
            "decided_by": self.decided_by,
        }


@dataclass(frozen=True)
class Decisions:
    """What the operator decided on the command line about drift that cannot be carried exactly."""

    skip_schemas: frozenset[str] = frozenset()
    # (schema, table as it is named) -> the legacy table it stands for
    rename_tables: dict[tuple[str, str], str] = field(default_factory=dict)
    # SCHEMA.TABLE patterns (fnmatch: '*.notes_2019'): unknown tables left where they are, not migrated
    leave_tables: tuple[str, ...] = ()
    # SCHEMA.TABLE.NAME patterns: legacy constraints and indexes not carried to the new table
    leave_constraints: tuple[str, ...] = ()
    # the legacy application's time zone and where it came from: legacy timestamps are read in it
    legacy_timezone: tuple[str, str] = ("UTC", "default")

    def leaves_table(self, schema: str, table: str) -> bool:
        return any(fnmatch.fnmatchcase(f"{schema}.{table}", pattern) for pattern in self.leave_tables)

    def leaves_constraint(self, schema: str, table: str, name: str) -> bool:
        return any(fnmatch.fnmatchcase(f"{schema}.{table}.{name}", pattern) for pattern in self.leave_constraints)


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


def _relations(schemas: list[str]) -> list[Relation]:
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


def _read_details(relations: list[Relation]) -> None:
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


def _sequence_facts(relation: Relation, column: str) -> SequenceFacts | None:
    """The sequence behind ``column`` (identity, serial or a nextval() default), its position, max(column)
    and the other tables whose column defaults draw from the same sequence."""
    row = db.fetchone(
        "WITH seq AS (SELECT coalesce(pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), %s), "
        "  (SELECT format('%%I.%%I', sn.nspname, sc.relname) FROM pg_attrdef ad "
        "   JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum "
        "   JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid "
        "     AND d.refclassid = 'pg_class'::regclass "
        "   JOIN pg_class sc ON sc.oid = d.refobjid AND sc.relkind = 'S' "
        "   JOIN pg_namespace sn ON sn.oid = sc.relnamespace "
        "   WHERE ad.adrelid = %s::oid AND a.attname = %s LIMIT 1))::regclass AS oid) "
        "SELECT seq.oid::text, pg_sequence_last_value(seq.oid), "
        "  ARRAY(SELECT DISTINCT format('%%I.%%I', n.nspname, c.relname) FROM pg_depend d "
        "        JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid "
        "        JOIN pg_class c ON c.oid = ad.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "        WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = seq.oid AND ad.adrelid <> %s::oid)::text[] "
        "FROM seq WHERE seq.oid IS NOT NULL",
        [relation.schema, relation.name, column, relation.oid, column, relation.oid],
    )
    if row is None:
        return None
    name, last_value, shared = row
    max_id = db.fetchvalue(
        sql.SQL("SELECT max({c})::bigint FROM ONLY {t}").format(
            c=sql.Identifier(column), t=sql.Identifier(relation.schema, relation.name)
        )
    )
    return SequenceFacts(name, last_value, max_id, tuple(shared))


def _count(query: sql.Composable) -> int:
    return int(db.fetchvalue(query) or 0)


# --- classification ---------------------------------------------------------------------------------


def inspect_schemas(
    schemas: list[str], decisions: Decisions = Decisions(), progress: Any = None
) -> Iterator[tuple[str, list[Finding]]]:
    """Each schema of ``schemas`` with its findings, ``SCHEMAS_PER_QUERY`` schemas' catalog at a time."""
    for start in range(0, len(schemas), SCHEMAS_PER_QUERY):
        chunk = schemas[start : start + SCHEMAS_PER_QUERY]
        relations = _relations(chunk)
        by_schema: dict[str, list[Relation]] = {schema: [] for schema in chunk}
        for relation in relations:
            by_schema[relation.schema].append(relation)
        wanted = [r for r in relations if _is_legacy_candidate(r)]
        _read_details(wanted)
        for schema in chunk:
            yield schema, _classify_schema(schema, by_schema[schema], decisions)
        if progress is not None:
            progress(min(start + SCHEMAS_PER_QUERY, len(schemas)), len(schemas))


def _is_legacy_candidate(relation: Relation) -> bool:
    """A table the inspection reads the columns of: a legacy table, a case variant of one, an inheritance child."""
    return not relation.is_partition and (
        relation.name.lower().strip() in LEGACY_TENANT_TABLES or relation.parent is not None
    )


def _classify_schema(schema: str, relations: list[Relation], decisions: Decisions) -> list[Finding]:
    if schema in decisions.skip_schemas:
        findings = _classify_tables(schema, relations, decisions)
        return [
            Finding(
                f.schema,
                f.table,
                f.kind,
                f.object_name,
                f.detail,
                Disposition.DECIDED,
                "tenant left out",
                "--skip-schema",
            )
            if f.blocks
            else f
            for f in findings
        ]
    return _classify_tables(schema, relations, decisions)


def _classify_tables(schema: str, relations: list[Relation], decisions: Decisions) -> list[Finding]:
    findings: list[Finding] = []
    named = {r.name: r for r in relations if not r.is_partition}
    targets = set(tenant_table_names())
    expected = expected_tables()
    accounted: set[str] = set()
    for table, shape in expected.items():
        relation = named.get(table)
        variants = [r for r in named.values() if r.name != table and r.name.lower().strip() == table]
        for variant in variants:
            accounted.add(variant.name)
            findings.append(_name_variant(schema, table, variant, relation is not None, decisions))
            renamed_to = decisions.rename_tables.get((schema, variant.name))
            if relation is None and renamed_to == table:
                relation = variant  # inspected as the table it will be renamed to
        if relation is None:
            if not variants:
                findings.append(
                    Finding(schema, table, FindingKind.MISSING_TABLE, "", "", Disposition.CARRIED, "nothing to copy")
                )
            continue
        accounted.add(relation.name)
        findings += _table_findings(schema, table, relation, shape, decisions, relations)
    for relation in named.values():
        if relation.name in accounted or relation.name in targets:
            continue
        if relation.parent is not None and relation.parent in accounted:
            continue  # an inheritance child: reported with its parent
        findings += _unknown_table(schema, relation, decisions)
    return findings


def _name_variant(schema: str, table: str, variant: Relation, original_exists: bool, decisions: Decisions) -> Finding:
    option = f"--rename-table {schema}.{variant.name}={table}"
    detail = f"{variant.name!r} stands for {table!r}?"
    if original_exists:
        detail = f"{variant.name!r} beside {table!r}"
    decided = decisions.rename_tables.get((schema, variant.name))
    if decided == table and not original_exists:
        return Finding(
            schema,
            variant.name,
            FindingKind.NAME_CASE,
            "",
            detail,
            Disposition.DECIDED,
            f"renamed to {table} in phase 1, then migrated as {table}",
            option,
        )
    if decisions.leaves_table(schema, variant.name):
        return Finding(
            schema,
            variant.name,
            FindingKind.NAME_CASE,
            "",
            detail,
            Disposition.DECIDED,
            "left in place, not migrated",
            "--leave-table",
        )
    remedy = f"pass {option} to migrate it as {table}" if not original_exists else "merge it into the legacy table"
    return Finding(
        schema,
        variant.name,
        FindingKind.NAME_CASE,
        "",
        detail,
        Disposition.DECISION,
        f"{remedy}, --leave-table {schema}.{variant.name} to leave it in place, or --skip-schema {schema}",
    )


def _unknown_table(schema: str, relation: Relation, decisions: Decisions) -> list[Finding]:
    rows = _count(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, relation.name)))
    if rows == 0:
        return []
    detail = f"{rows} rows; the registry does not know it"
    if decisions.leaves_table(schema, relation.name):
        return [
            Finding(
                schema,
                relation.name,
                FindingKind.UNKNOWN_TABLE,
                "",
                detail,
                Disposition.DECIDED,
                "left in place, untouched, not migrated",
                "--leave-table",
            )
        ]
    return [
        Finding(
            schema,
            relation.name,
            FindingKind.UNKNOWN_TABLE,
            "",
            detail,
            Disposition.DECISION,
            f"its rows are not migrated: --leave-table {schema}.{relation.name} to leave it in place, "
            f"or --skip-schema {schema}",
        )
    ]


def _table_findings(
    schema: str, table: str, relation: Relation, shape: ExpectedTable, decisions: Decisions, relations: list[Relation]
) -> list[Finding]:
    findings: list[Finding] = []
    name = relation.name
    table_ident = sql.Identifier(schema, name)

    def add(kind: FindingKind, obj: str, detail: str, disposition: Disposition, action: str, by: str = "") -> None:
        findings.append(Finding(schema, table, kind, obj, detail, disposition, action, by))

    if relation.relkind == "p":
        parts = ", ".join(relation.partitions) or "no partitions"
        add(FindingKind.PARTITIONED, "", f"partitions: {parts}", Disposition.CARRIED, "copied from all partitions")
    if relation.unlogged:
        add(FindingKind.UNLOGGED, "", "UNLOGGED", Disposition.CARRIED, "copied into a logged (crash-safe) table")
    for child in (r for r in relations if r.parent == name and not r.is_partition):
        rows = _count(sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, child.name)))
        extra = [c["name"] for c in child.columns if c["name"] not in {p["name"] for p in relation.columns}]
        detail = f"{child.name}: {rows} rows" + (f", extra columns {', '.join(extra)}" if extra else "")
        if rows == 0 and not extra:
            add(FindingKind.INHERITED, child.name, detail, Disposition.CARRIED, "empty child: nothing to copy")
        else:
            add(
                FindingKind.INHERITED,
                child.name,
                detail,
                Disposition.REFUSED,
                f"only {table}'s own rows are copied: move the child's rows into {table} (and drop the child) "
                f"or --skip-schema {schema}",
            )
    legacy_columns = {c["name"]: c for c in relation.columns}
    for column in relation.columns:
        if column["name"] not in shape.columns:
            add(
                FindingKind.EXTRA_COLUMN,
                column["name"],
                column["type"],
                Disposition.REFUSED,
                "no target column: add it to the target model, drop it from the legacy table deliberately, "
                f"or --skip-schema {schema}",
            )
    for expected in shape.columns.values():
        legacy_column = legacy_columns.get(expected.name)
        if legacy_column is None:
            add(
                FindingKind.MISSING_COLUMN,
                expected.name,
                f"{expected.data_type} expected",
                Disposition.REFUSED,
                f"add the column to {schema}.{name} (NULL or the value the application assumes) "
                f"or --skip-schema {schema}",
            )
            continue
        findings += _column_findings(schema, table, table_ident, legacy_column, expected, shape, decisions)
    findings += _constraint_findings(schema, table, relation, shape, decisions)
    findings += _sequence_findings(schema, table, relation, shape)
    return findings


def _column_findings(
    schema: str,
    table: str,
    table_ident: sql.Identifier,
    column: dict[str, Any],
    expected: ExpectedColumn,
    shape: ExpectedTable,
    decisions: Decisions,
) -> list[Finding]:
    findings: list[Finding] = []
    name = column["name"]

    def add(kind: FindingKind, detail: str, disposition: Disposition, action: str) -> None:
        findings.append(Finding(schema, table, kind, name, detail, disposition, action))

    if name in shape.remapped:  # ids of the legacy reference table, replaced by shared ids
        legacy_type_ok = column["type"] in ("bigint", "integer", "smallint")
    else:
        legacy_type_ok = column["type"] == expected.data_type
    if column["typtype"] == "e":
        add(FindingKind.ENUM, f"{column['type']} -> {expected.data_type}", Disposition.CARRIED, "copied as its label")
    elif column["typtype"] == "d":
        if column["domain_checks"]:
            add(
                FindingKind.DOMAIN,
                f"{column['type']} with {column['domain_checks']} CHECK constraint(s) -> {expected.data_type}",
                Disposition.DECISION,
                "the new column does not enforce the domain's checks: "
                f"--leave-constraint {schema}.{table}.{column['type']} to accept that, or --skip-schema {schema}",
            )
        else:
            add(FindingKind.DOMAIN, f"{column['type']} -> {expected.data_type}", Disposition.CARRIED, "copied as is")
    elif not legacy_type_ok:
        findings.append(_type_finding(schema, table, column, expected, shape, decisions))
    if column["nullable"] and not expected.nullable:
        nulls = _count(
            sql.SQL("SELECT count(*) FROM ONLY {t} WHERE {c} IS NULL").format(t=table_ident, c=sql.Identifier(name))
        )
        if nulls:
            add(
                FindingKind.NULLABILITY,
                f"{nulls} NULLs; the target column is NOT NULL",
                Disposition.REFUSED,
                f"set a value in those rows of the legacy table or --skip-schema {schema}",
            )
        else:
            add(FindingKind.NULLABILITY, "nullable, no NULLs", Disposition.CARRIED, "the target column is NOT NULL")
    elif not column["nullable"] and expected.nullable:
        add(
            FindingKind.NULLABILITY,
            "NOT NULL in the legacy table",
            Disposition.CARRIED,
            "the target column allows NULL",
        )
    if column["generated"]:
        add(FindingKind.GENERATED, "generated column", Disposition.CARRIED, "its values are copied into a plain column")
    elif column["default"] is not None and not column["identity"] and "nextval(" not in column["default"]:
        add(
            FindingKind.DEFAULT,
            f"DEFAULT {column['default']}",
            Disposition.CARRIED,
            "rows keep their values; new rows get the target's default (none: the application sets it)",
        )
    if column["collation"]:
        add(
            FindingKind.COLLATION,
            f"COLLATE {column['collation']}",
            Disposition.CARRIED,
            "values copied byte for byte; the new column compares and sorts by the database's default collation",
        )
    return findings


def _type_finding(
    schema: str,
    table: str,
    column: dict[str, Any],
    expected: ExpectedColumn,
    shape: ExpectedTable,
    decisions: Decisions,
) -> Finding:
    """A column of another type than its target: carried when every value converts exactly (checked now, one
    query, and again before the copy), refused with counts and example keys otherwise."""
    name = column["name"]
    target_oid = int(db.fetchvalue("SELECT to_regtype(%s)::oid::bigint", [expected.data_type]) or 0)
    difference = TypeDifference(name, column["type"], expected.data_type, column["type_oid"], target_oid)
    zone, source = decisions.legacy_timezone
    zoned = (column["type_oid"], target_oid) == (TIMESTAMP_OID, TIMESTAMPTZ_OID)
    copy = TableCopy(schema, table, schema, table, (name,), key=shape.key, legacy_timezone=zone if zoned else None)
    detail = f"{column['type']} in the legacy table, {expected.data_type} in the target"
    if zoned:
        detail += f"; read as wall-clock times of {zone} ({source})"
    rows, keys = inexact_values(copy, difference)
    if rows:
        return Finding(
            schema,
            table,
            FindingKind.TYPE,
            name,
            f"{detail}; {rows} rows it cannot hold exactly, e.g. {'/'.join(shape.key)} {', '.join(keys)}",
            Disposition.REFUSED,
            f"correct those rows in the legacy table (never rounded or cut), or --skip-schema {schema}",
        )
    return Finding(
        schema,
        table,
        FindingKind.TYPE,
        name,
        detail,
        Disposition.CARRIED,
        "every value converts exactly (checked again before the copy)",
    )


_CONSTRAINT_WORD = {"c": "CHECK", "u": "UNIQUE", "x": "EXCLUDE", "f": "FOREIGN KEY", "p": "PRIMARY KEY"}


def _constraint_findings(
    schema: str, table: str, relation: Relation, shape: ExpectedTable, decisions: Decisions
) -> list[Finding]:
    findings: list[Finding] = []

    def add(kind: FindingKind, obj: str, detail: str, disposition: Disposition, action: str, by: str = "") -> None:
        findings.append(Finding(schema, table, kind, obj, detail, disposition, action, by))

    left_option = "--leave-constraint"
    primary = next((c for c in relation.constraints if c["type"] == "p"), None)
    if primary is None or tuple(primary["columns"]) != shape.key:
        detail = f"PRIMARY KEY ({', '.join(primary['columns'])})" if primary else "no primary key"
        duplicates = _count(
            sql.SQL("SELECT count(*) FROM (SELECT {k} FROM ONLY {t} GROUP BY {k} HAVING count(*) > 1) d").format(
                k=db.ident_list(shape.key), t=sql.Identifier(schema, relation.name)
            )
        )
        if duplicates:
            add(
                FindingKind.PRIMARY_KEY,
                ", ".join(shape.key),
                f"{detail}; {duplicates} duplicated keys",
                Disposition.REFUSED,
                f"make ({', '.join(shape.key)}) unique in the legacy table or --skip-schema {schema}",
            )
        else:
            add(
                FindingKind.PRIMARY_KEY,
                ", ".join(shape.key),
                f"{detail}; keys are unique",
                Disposition.CARRIED,
                f"the new table's primary key is ({', '.join(shape.key)})",
            )
    for constraint in relation.constraints:
        kind, columns = constraint["type"], tuple(constraint["columns"])
        if kind == "p" or (kind == "u" and columns in shape.unique):
            continue
        if kind == "f" and len(columns) == 1 and columns[0] in shape.foreign_keys:
            continue
        detail = constraint["definition"]
        if decisions.leaves_constraint(schema, table, constraint["name"]):
            add(
                FindingKind.CONSTRAINT,
                constraint["name"],
                detail,
                Disposition.DECIDED,
                "left behind: the new table does not enforce it",
                left_option,
            )
        elif kind == "f":
            add(
                FindingKind.CONSTRAINT,
                constraint["name"],
                detail,
                Disposition.DECISION,
                "the target layout has no such foreign key: "
                f"{left_option} {schema}.{table}.{constraint['name']} to leave it behind, or --skip-schema {schema}",
            )
        else:
            add(
                FindingKind.CONSTRAINT,
                constraint["name"],
                f"{_CONSTRAINT_WORD[kind]}: {detail}",
                Disposition.CARRIED,
                "re-created on the new table and validated",
            )
    for index in relation.indexes:
        indexed = tuple(index["columns"]) if index["columns"] is not None else None
        if index["constraint"]:
            continue  # a primary key, unique or exclusion constraint's own index: reported above
        if (
            not index["partial"]
            and columns is not None
            and columns in shape.indexed
            and (not index["unique"] or indexed in shape.unique)
        ):
            continue
        if decisions.leaves_constraint(schema, table, index["name"]):
            add(
                FindingKind.INDEX,
                index["name"],
                index["definition"],
                Disposition.DECIDED,
                "left behind: not created on the new table",
                left_option,
            )
        elif index["unique"]:
            add(
                FindingKind.INDEX,
                index["name"],
                index["definition"],
                Disposition.CARRIED,
                "re-created on the new table (enforces the same uniqueness)",
            )
        else:
            add(
                FindingKind.INDEX,
                index["name"],
                index["definition"],
                Disposition.CARRIED,
                "re-created on the new table",
            )
    return findings


def _sequence_findings(schema: str, table: str, relation: Relation, shape: ExpectedTable) -> list[Finding]:
    if shape.key != ("id",) or "id" not in {c["name"] for c in relation.columns}:
        return []
    facts = _sequence_facts(relation, "id")
    if facts is None:
        return []
    findings = []
    if facts.last_value is not None and facts.last_value > (facts.max_id or 0):
        findings.append(
            Finding(
                schema,
                table,
                FindingKind.SEQUENCE,
                facts.name,
                f"issued up to {facts.last_value}, max(id) {facts.max_id}",
                Disposition.CARRIED,
                f"the new table's ids continue after {facts.last_value}",
            )
        )
    if facts.shared_with:
        findings.append(
            Finding(
                schema,
                table,
                FindingKind.SHARED_SEQUENCE,
                facts.name,
                f"also the default of {', '.join(facts.shared_with)}",
                Disposition.CARRIED,
                "the new table gets its own sequence, continuing after the shared one's last value",
            )
        )
    return findings


# --- grouping --------------------------------------------------------------------------------------


@dataclass
class FindingGroup:
    """Identical findings of several tenants: one line with a count and examples."""

    table: str
    kind: str
    object_name: str
    detail: str
    disposition: str
    action: str
    decided_by: str
    schemas: list[str] = field(default_factory=list)
    count: int = 0

    def line(self, examples: int = 3) -> str:
        where = f"{self.table}" + (f".{self.object_name}" if self.object_name else "")
        shown = ", ".join(self.schemas[:examples]) + (", ..." if self.count > examples else "")
        tenants = f"{self.count} tenant{'s' if self.count != 1 else ''} ({shown})"
        text = f"{tenants}: {where}: {self.kind}" + (f" ({self.detail})" if self.detail else "")
        label = Disposition(self.disposition).label
        decided = f" [{self.decided_by}]" if self.decided_by else ""
        text = f"{text} -- {label}{decided}: {self.action}" if self.action else text
        # One tenant: its own name where the group says tenant_<id> (an option can be copied as it is).
        return text.replace(SCHEMA_PLACEHOLDER, self.schemas[0]) if self.count == 1 else text

    def as_dict(self, examples: int = 5) -> dict[str, object]:
        return {
            "table": self.table,
            "kind": self.kind,
            "object": self.object_name,
            "detail": self.detail,
            "disposition": self.disposition,
            "action": self.action,
            "decided_by": self.decided_by,
            "tenants": self.count,
            "examples": self.schemas[:examples],
        }


def _generic(text: str, schema: str) -> str:
    """A finding's text with its own schema's name put as a placeholder, so identical drift groups."""
    return text.replace(schema, SCHEMA_PLACEHOLDER) if schema else text


def group_findings(findings: Iterable[dict[str, str]], keep_examples: int = 5) -> list[FindingGroup]:
    """Findings (as dicts) grouped across tenants: blocking ones first, then by table and kind."""
    groups: dict[tuple[str, ...], FindingGroup] = {}
    for f in findings:
        schema = f["schema"]
        table, kind, obj, detail, disposition, action, decided_by = (
            _generic(f[k], schema) for k in ("table", "kind", "object", "detail", "disposition", "action", "decided_by")
        )
        key = (table, kind, obj, detail, disposition, action, decided_by)
        group = groups.get(key)
        if group is None:
            group = groups[key] = FindingGroup(table, kind, obj, detail, disposition, action, decided_by)
        group.count += 1
        if len(group.schemas) < keep_examples:
            group.schemas.append(schema)
    order = {Disposition.REFUSED: 0, Disposition.DECISION: 1, Disposition.DECIDED: 2, Disposition.CARRIED: 3}
    return sorted(groups.values(), key=lambda g: (order[Disposition(g.disposition)], g.table, g.kind, g.object_name))
