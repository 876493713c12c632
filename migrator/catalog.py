"""Read-only questions to the PostgreSQL catalog. Names are always parameters, never SQL text."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from migrator import db

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


def schema_exists(schema: str) -> bool:
    return bool(db.fetchvalue("SELECT to_regnamespace(quote_ident(%s)) IS NOT NULL", [schema]))


def table_exists(schema: str, table: str) -> bool:
    return bool(
        db.fetchvalue(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = {oid} AND c.relkind IN ('r', 'p'))").format(
                oid=RELATION_OID
            ),
            [schema, table],
        )
    )


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
    rows = db.fetchall(
        sql.SQL(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, "
            "       a.atthasdef OR a.attidentity <> '' "
            "FROM pg_attribute a "
            "WHERE a.attrelid = {oid} AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum"
        ).format(oid=RELATION_OID),
        [schema, table],
    )
    return [Column(*row) for row in rows]


def schemas_like_tenants() -> list[str]:
    """Every schema whose name starts with ``tenant_``, valid or not (the caller validates)."""
    rows = db.fetchall("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'tenant_') ORDER BY nspname")
    return [row[0] for row in rows]


def row_count(schema: str, table: str) -> int:
    return int(db.fetchvalue(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))))


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
    rows = db.fetchall(
        "SELECT r.rolname FROM pg_namespace n, aclexplode(n.nspacl) a JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE n.oid = to_regnamespace(quote_ident(%s)) AND r.rolname = ANY(%s) AND a.privilege_type = 'USAGE'",
        [schema, roles],
    )
    granted = {row[0] for row in rows}
    return [role for role in roles if role in granted]
