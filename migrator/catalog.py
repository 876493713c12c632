"""Read-only questions to the PostgreSQL catalog. Names are always parameters, never SQL text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, LiteralString

from psycopg import sql

from migrator import db
from migrator.models import MigrationRecord

# The oid of the relation ``schema.table`` (two parameters), NULL when there is none. Every lookup of
# one relation goes through it: a join of pg_class to pg_namespace filtered on both names can be
# planned from ``relname`` alone, which on a database whose catalog statistics predate its tenant
# schemas walks the same table name in every tenant schema (quadratic in the tenant count).
RELATION_OID = sql.SQL("to_regclass(format('%%I.%%I', %s::text, %s::text))")


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str
    nullable: bool
    has_default: bool
    type_oid: int = 0
    collation_oid: int = 0  # 0: a type without collation


def relation_rows(query: LiteralString, schema: str, table: str) -> list[tuple[Any, ...]]:
    """The rows of a catalog ``query`` about one relation, which it names as ``{oid}`` (see :data:`RELATION_OID`)."""
    return db.fetchall(sql.SQL(query).format(oid=RELATION_OID), [schema, table])


def tracking_table_exists() -> bool:
    """The migrator has run on this database: its tracking table is in ``public``."""
    return table_exists("public", MigrationRecord._meta.db_table)


def schema_exists(schema: str) -> bool:
    return bool(db.fetchvalue("SELECT to_regnamespace(quote_ident(%s)) IS NOT NULL", [schema]))


def advisory_lock_holders(classid: int, objid: int) -> list[str]:
    """``application_name`` of each session of this database that holds the session-level advisory
    lock (``classid``, ``objid``) (two int4 keys)."""
    rows = db.fetchall(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [classid, objid],
    )
    return [row[0] for row in rows]


@dataclass(frozen=True)
class SchemaCatalog:
    """The ordinary and partitioned tables of some schemas and their columns, read in one query
    (:func:`read_schemas`), answering the catalog questions of a scope's copy, validation, sync or cutover
    checks without a query each. Its methods take the same arguments as this module's functions and
    give the same answers; a table it does not hold, or another schema's, is looked up as they do.

    Valid only while no table of its schemas is created, dropped, renamed or altered (their indexes and
    constraints may change: a copy drops and rebuilds them): read it once the schema-change lock or
    the tables' own locks are held, and let no code that changes a table of the schemas use it after.
    """

    schemas: frozenset[str]  # empty: holds nothing, every question goes to the catalog (:data:`NOT_READ`)
    tables: Mapping[tuple[str, str], tuple[Column, ...]]  # (schema, table) -> its columns
    partitioned: frozenset[tuple[str, str]]

    def _held(self, schema: str, table: str) -> tuple[Column, ...] | None:
        return self.tables.get((schema, table)) if schema in self.schemas else None

    def holds(self, schema: str) -> bool:
        return schema in self.schemas

    def table_exists(self, schema: str, table: str) -> bool:
        return self._held(schema, table) is not None or table_exists(schema, table)

    def columns(self, schema: str, table: str) -> list[Column]:
        held = self._held(schema, table)
        return list(held) if held is not None else columns(schema, table)

    def is_partitioned(self, schema: str, table: str) -> bool:
        if self._held(schema, table) is not None:
            return (schema, table) in self.partitioned
        return is_partitioned(schema, table)

    def own_rows(self, schema: str, table: str) -> sql.Composed:
        """:func:`own_rows`, partitioned or not as this catalog says."""
        return own_rows(schema, table, self.is_partitioned(schema, table))

    def row_count(self, schema: str, table: str) -> int:
        """:func:`row_count`, partitioned or not as this catalog says."""
        return row_count(schema, table, self.is_partitioned(schema, table))

    def partitioned_by_schema(self, schemas: list[str], table: str) -> dict[str, bool]:
        """:func:`partitioned_by_schema`, the schemas it holds answered as :meth:`tables_of` does."""
        held = {s: (s, table) in self.partitioned for s in schemas if (s, table) in self.tables}
        rest = [s for s in schemas if s not in self.schemas]
        return held | (partitioned_by_schema(rest, table) if rest else {})

    def tables_of(self, schema: str) -> set[str]:
        """``schema``'s ordinary and partitioned tables (:func:`tables_by_schema` of that schema alone)."""
        if schema in self.schemas:
            return {table for held_schema, table in self.tables if held_schema == schema}
        return tables_by_schema([schema])[schema]


# No schema read: each question is one catalog query (a copy or check run outside a scope's block).
NOT_READ = SchemaCatalog(frozenset(), {}, frozenset())


def read_for(schema: str, handed: object) -> SchemaCatalog:
    """``handed`` when it is a :class:`SchemaCatalog` that holds ``schema`` (what phase 3's ``tenant_context``
    hands a tenant's steps as ``StepReporter.tenant``), else :data:`NOT_READ`."""
    return handed if isinstance(handed, SchemaCatalog) and handed.holds(schema) else NOT_READ


def read_schemas(*schemas: str) -> SchemaCatalog:
    """The ordinary and partitioned tables of ``schemas`` and their columns, in one catalog query (see
    :class:`SchemaCatalog` for how long the answer holds)."""
    rows = db.fetchall(
        "SELECT s.nspname, c.relname, c.relkind = 'p', a.attname, format_type(a.atttypid, a.atttypmod), "
        "       NOT a.attnotnull, a.atthasdef OR a.attidentity <> '', a.atttypid::bigint, a.attcollation::bigint "
        "FROM unnest(%s::text[]) s(nspname) "
        "JOIN pg_depend d ON d.refclassid = 'pg_namespace'::regclass "
        "AND d.refobjid = to_regnamespace(quote_ident(s.nspname)) AND d.refobjsubid = 0 "
        "AND d.classid = 'pg_class'::regclass "
        "JOIN pg_class c ON c.oid = d.objid "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE c.relkind IN ('r', 'p') "
        "ORDER BY s.nspname, c.relname, a.attnum",
        [list(dict.fromkeys(schemas))],  # each once: a schema named twice would list its columns twice
    )
    tables: dict[tuple[str, str], list[Column]] = {}
    partitioned: set[tuple[str, str]] = set()
    for schema, table, is_partitioned_table, name, *column in rows:
        found = tables.setdefault((schema, table), [])
        if is_partitioned_table:
            partitioned.add((schema, table))
        if name is not None:  # a table with no columns is one row of NULLs
            found.append(Column(name, *column))
    return SchemaCatalog(frozenset(schemas), {key: tuple(cols) for key, cols in tables.items()}, frozenset(partitioned))


def table_exists(schema: str, table: str) -> bool:
    return bool(
        db.fetchvalue(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = {oid} AND c.relkind IN ('r', 'p'))").format(
                oid=RELATION_OID
            ),
            [schema, table],
        )
    )


def schemas_with_table(schemas: list[str], table: str) -> set[str]:
    """Those of ``schemas`` that hold the ordinary table ``table``: one keyed lookup per schema, and a
    set of names rather than every schema's tables (ten thousand tenants' table lists took tens of MiB)."""
    return set(partitioned_by_schema(schemas, table))


def partitioned_by_schema(schemas: list[str], table: str) -> dict[str, bool]:
    """Those of ``schemas`` that hold the table ``table`` (as :func:`schemas_with_table`) -> whether it
    is partitioned there, in one query."""
    rows = db.fetchall(
        "SELECT s.nspname, c.relkind = 'p' FROM unnest(%s::text[]) s(nspname) "
        "JOIN pg_class c ON c.oid = to_regclass(format('%%I.%%I', s.nspname, %s::text)) "
        "WHERE c.relkind IN ('r', 'p')",
        [schemas, table],
    )
    return {schema: bool(partitioned) for schema, partitioned in rows}


def is_partitioned(schema: str, table: str) -> bool:
    """Whether ``schema.table`` is a partitioned table (its rows are all in its partitions)."""
    return bool(
        db.fetchvalue(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = {oid} AND c.relkind = 'p')").format(
                oid=RELATION_OID
            ),
            [schema, table],
        )
    )


def own_rows(schema: str, table: str, partitioned: bool | None = None) -> sql.Composed:
    """``schema.table`` as a FROM item that reads the table's own rows and no other table's.

    ``ONLY`` for an ordinary table: without it a read includes the rows of its inheritance children,
    which have their own columns and are not the table's rows. Never for a partitioned table, whose
    rows are all in its partitions (``ONLY`` would read none). ``partitioned``: when the caller knows.
    """
    if partitioned is None:
        partitioned = is_partitioned(schema, table)
    name = sql.Identifier(schema, table)
    return sql.Composed([name]) if partitioned else sql.SQL("ONLY {}").format(name)


@dataclass(frozen=True)
class InheritanceChild:
    parent: str
    schema: str
    table: str
    rows: int  # with its own children's: every row a read of the parent without ONLY would show


def inheritance_children(schema: str, tables: list[str]) -> list[InheritanceChild]:
    """The inheritance children of ``schema``'s ordinary ``tables``, and their rows.

    Partitions are children in pg_inherits too, but they hold a partitioned table's own rows: only
    children of ordinary tables count (a partitioned table cannot have inheritance children).
    """
    rows = db.fetchall(
        "SELECT p.relname, cn.nspname, c.relname FROM unnest(%s::text[]) t(name) "
        "JOIN pg_class p ON p.oid = to_regclass(format('%%I.%%I', %s::text, t.name)) AND p.relkind = 'r' "
        "JOIN pg_inherits i ON i.inhparent = p.oid JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_namespace cn ON cn.oid = c.relnamespace ORDER BY 1, 2, 3",
        [tables, schema],
    )
    return [
        InheritanceChild(
            parent,
            child_schema,
            child,
            int(db.fetchvalue(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(child_schema, child)))),
        )
        for parent, child_schema, child in rows
    ]


def tables_by_schema(schemas: list[str]) -> dict[str, set[str]]:
    """Ordinary tables of each schema in ``schemas``, in one query."""
    # Every relation depends on its schema: pg_depend's index on the referenced object finds a
    # schema's relations without reading every tenant's (pg_class has no index on relnamespace).
    rows = db.fetchall(
        "SELECT s.nspname, c.relname FROM unnest(%s::text[]) s(nspname) "
        "JOIN pg_depend d ON d.refclassid = 'pg_namespace'::regclass "
        "AND d.refobjid = to_regnamespace(quote_ident(s.nspname)) AND d.refobjsubid = 0 "
        "AND d.classid = 'pg_class'::regclass "
        "JOIN pg_class c ON c.oid = d.objid WHERE c.relkind IN ('r', 'p')",
        [schemas],
    )
    found: dict[str, set[str]] = {schema: set() for schema in schemas}
    for schema, table in rows:
        found[schema].add(table)
    return found


def columns(schema: str, table: str) -> list[Column]:
    rows = relation_rows(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, "
        "       a.atthasdef OR a.attidentity <> '', a.atttypid::bigint, a.attcollation::bigint "
        "FROM pg_attribute a "
        "WHERE a.attrelid = {oid} AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        schema,
        table,
    )
    return [Column(*row) for row in rows]


def column_sequence(schema: str, table: str, column: str = "id") -> tuple[str, str] | None:
    """The sequence that feeds ``schema.table.column`` (schema, name), None when none does.

    Its identity sequence, the serial sequence it owns, or else the sequence its DEFAULT calls
    (``nextval('seq')``, found through the default's dependency on it, not by parsing its text): such
    a sequence may be owned by no table, or by another table that shares it.
    """
    row = db.fetchone(
        sql.SQL(
            "SELECT n.nspname, s.relname FROM pg_attribute a "
            "CROSS JOIN LATERAL ("
            "  SELECT d.objid AS seq, 0 AS rank FROM pg_depend d "
            "  WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
            "  AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum AND d.deptype IN ('a', 'i') "
            "  UNION ALL "
            "  SELECT d.refobjid, 1 FROM pg_attrdef ad JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass "
            "  AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass "
            "  WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum) f "
            "JOIN pg_class s ON s.oid = f.seq AND s.relkind = 'S' "
            "JOIN pg_namespace n ON n.oid = s.relnamespace "
            "WHERE a.attrelid = {oid} AND a.attname = %s AND NOT a.attisdropped "
            "ORDER BY f.rank, s.oid LIMIT 1"
        ).format(oid=RELATION_OID),
        [schema, table, column],
    )
    return (row[0], row[1]) if row else None


def schemas_like_tenants() -> list[str]:
    """Every schema whose name starts with ``tenant_``, valid or not (the caller validates)."""
    rows = db.fetchall("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'tenant_') ORDER BY nspname")
    return [row[0] for row in rows]


def tables_without_trigger(schema: str, tables: list[str], trigger: str) -> list[str]:
    """Those of ``schema``'s ``tables`` on which ``trigger`` is missing or disabled."""
    rows = db.fetchall(
        "SELECT t.tbl FROM unnest(%s::text[]) t(tbl) WHERE NOT EXISTS (SELECT 1 FROM pg_trigger g "
        "WHERE g.tgrelid = to_regclass(format('%%I.%%I', %s::text, t.tbl)) AND g.tgname = %s AND g.tgenabled <> 'D')",
        [tables, schema, trigger],
    )
    return [r[0] for r in rows]


def row_count(schema: str, table: str, partitioned: bool | None = None) -> int:
    """The table's own rows (see :func:`own_rows`: not its inheritance children's; ``partitioned``: when the
    caller knows)."""
    return int(db.fetchvalue(sql.SQL("SELECT count(*) FROM {}").format(own_rows(schema, table, partitioned))))


def server_version_num() -> int:
    return int(db.fetchvalue("SHOW server_version_num"))


def database_size() -> int:
    return int(db.fetchvalue("SELECT pg_database_size(current_database())"))


def role_exists(role: str) -> bool:
    return bool(db.fetchvalue("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", [role]))


def role_oid(role: str) -> int | None:
    return db.fetchvalue("SELECT oid::bigint FROM pg_roles WHERE rolname = %s", [role])


def role_can_log_in(role: str) -> bool:
    """A LOGIN or superuser role: a person's or an application's account, never a service group role."""
    return bool(db.fetchvalue("SELECT rolcanlogin OR rolsuper FROM pg_roles WHERE rolname = %s", [role]))


def has_schema_usage_granted(role: str, schema: str) -> bool:
    """USAGE on ``schema`` granted to ``role`` itself (not inherited, not through PUBLIC)."""
    return bool(
        db.fetchvalue(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE n.nspname = %s AND r.rolname = %s AND a.privilege_type = 'USAGE')",
            [schema, role],
        )
    )


def missing_roles(roles: list[str]) -> list[str]:
    """Those of ``roles`` that do not exist, in one query."""
    present = {row[0] for row in db.fetchall("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [roles])}
    return [role for role in roles if role not in present]


def roles_with_schema_usage_granted(roles: list[str], schema: str) -> list[str]:
    """Those of ``roles`` granted USAGE on ``schema`` themselves (as :func:`has_schema_usage_granted`), at once."""
    return roles_with_usage_granted_by_schema(roles, [schema])[schema]


def roles_with_usage_granted_by_schema(roles: list[str], schemas: list[str]) -> dict[str, list[str]]:
    """:func:`roles_with_schema_usage_granted` for several schemas, in one query."""
    rows = db.fetchall(
        "SELECT s.name, r.rolname FROM unnest(%s::text[]) s(name) "
        "JOIN pg_namespace n ON n.oid = to_regnamespace(quote_ident(s.name)) "
        "CROSS JOIN LATERAL aclexplode(n.nspacl) a JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE r.rolname = ANY(%s) AND a.privilege_type = 'USAGE'",
        [schemas, roles],
    )
    granted = {(schema, role) for schema, role in rows}
    return {schema: [role for role in roles if (schema, role) in granted] for schema in schemas}


# Types and collations PostgreSQL creates with every database (below FirstNormalObjectId): the same
# in each database of one server, so what is found of them holds for the whole process.
FIRST_NORMAL_OBJECT_ID = 16384
_hashed_by_value_builtin: dict[tuple[int, int], bool] = {}


def hashed_by_value(type_oid: int, collation_oid: int) -> bool:
    """Whether values of this type (under this collation) can be fingerprinted by the type's own hash.

    They can when the type's default btree operator class declares that equal values are identical
    (its "equalimage" support function, which index deduplication relies on; for text only under a
    deterministic collation) and its hash operator class has a 64-bit hash function. numeric
    (1.0 = 1.00), float (-0 = 0), jsonb, arrays and domains cannot: they are fingerprinted by their
    text, which tells those apart. varchar has no operator class of its own and uses text's, as the
    server does.
    """
    key = (type_oid, collation_oid)
    builtin = type_oid < FIRST_NORMAL_OBJECT_ID and collation_oid < FIRST_NORMAL_OBJECT_ID
    if builtin and key in _hashed_by_value_builtin:
        return _hashed_by_value_builtin[key]
    found = bool(
        db.fetchvalue(
            "SELECT EXISTS (SELECT 1 FROM pg_opclass bo JOIN pg_amproc ep ON ep.amprocfamily = bo.opcfamily "
            "    AND ep.amproclefttype = bo.opcintype AND ep.amprocrighttype = bo.opcintype AND ep.amprocnum = 4 "
            "  WHERE bo.opcmethod = (SELECT oid FROM pg_am WHERE amname = 'btree') AND bo.opcdefault "
            "  AND bo.opcintype = x.type AND (ep.amproc = 'btequalimage'::regproc "
            "    OR (ep.amproc = 'btvarstrequalimage'::regproc AND coalesce((SELECT co.collisdeterministic "
            "        FROM pg_collation co WHERE co.oid = x.collation), true)))) "
            "AND EXISTS (SELECT 1 FROM pg_opclass ho JOIN pg_amproc hp ON hp.amprocfamily = ho.opcfamily "
            "    AND hp.amproclefttype = ho.opcintype AND hp.amprocrighttype = ho.opcintype AND hp.amprocnum = 2 "
            "  WHERE ho.opcmethod = (SELECT oid FROM pg_am WHERE amname = 'hash') AND ho.opcdefault "
            "  AND ho.opcintype = x.type) "
            "FROM (SELECT CASE WHEN %s::oid = 'varchar'::regtype THEN 'text'::regtype::oid ELSE %s::oid END AS type, "
            "      %s::oid AS collation) x",
            [type_oid, type_oid, collation_oid],
        )
    )
    if builtin:
        _hashed_by_value_builtin[key] = found
    return found


def timezone_known(name: str) -> bool:
    """Whether the server knows the time zone ``name`` (exactly as ``SET timezone`` would take it)."""
    return bool(db.fetchvalue("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = %s)", [name]))


def database_timezone() -> str:
    """The time zone a new session of this database starts with: the database's or role's setting,
    else the server's. ``reset_val``, not the current setting, which Django sets to its TIME_ZONE."""
    return str(db.fetchvalue("SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'"))
