"""Service roles and their grants: each service reaches exactly its own schema and tenant namespace.

Roles are NOLOGIN group roles (application logins are made members of them). Privileges are
granted per table, never with schema-wide defaults in tenant schemas: a tenant schema holds
tables of two services, and a default privilege would hand the other service's future tables over.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from migrator import catalog, db
from migrator.config import MigratorConfig
from migrator.tables import TENANT_DATA_TABLES
from migrator.tables import service_tables as tables_of_services
from salesflow.layout import NAMESPACE_SERVICE

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True)
class Grant:
    role: str
    schema: str
    table: str


def service_of_tenant_table(namespace: str) -> str:
    """contact_data -> contact, activity_data -> activity; auth owns no tenant tables."""
    return NAMESPACE_SERVICE[namespace]


def ensure_role(role: str) -> bool:
    if catalog.role_exists(role):
        return False
    db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    return True


def service_schema_statements(role: str, schema: str) -> list[sql.Composed]:
    """Usage on the schema, DML on its tables, its sequences, the same for tables created later; nothing in public."""
    r, s = sql.Identifier(role), sql.Identifier(schema)
    return [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(s, r),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, r),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}").format(s, r),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT USAGE, SELECT ON SEQUENCES TO {}").format(s, r),
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(r),
    ]


def grant_service_schema(role: str, schema: str) -> int:
    for statement in service_schema_statements(role, schema):
        db.execute(statement)
    return len(tables_of_services()[schema])


def grant_tenant_tables(config: MigratorConfig, tenant_schema: str) -> list[Grant]:
    grants = []
    for table in TENANT_DATA_TABLES:
        role = config.service_role(service_of_tenant_table(table.namespace))
        r = sql.Identifier(role)
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(tenant_schema), r))
        db.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
            sql.Identifier(tenant_schema, table.table), r))
        sequence = db.fetchvalue("SELECT pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), 'id')",
                                 [tenant_schema, table.table])
        if sequence:
            schema_name, seq_name = db.fetchone(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = %s::regclass", [sequence]) or (None, None)
            db.execute(sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(sql.Identifier(schema_name, seq_name), r))
        grants.append(Grant(role, tenant_schema, table.table))
    return grants


def expected_matrix(config: MigratorConfig, tenant_schemas: list[str], roles: list[str] | None = None,
                    service_tables: bool = True) -> dict[tuple[str, str, str], bool]:
    """(role, schema, table) -> may the role use it. Service tables and the tenants' tables, for ``roles``."""
    objects = [(schema, table) for schema, tables in tables_of_services().items() for table in tables] if service_tables else []
    objects += [(tenant, t.table) for tenant in tenant_schemas for t in TENANT_DATA_TABLES]
    owner = {(schema, table): schema for schema, tables in tables_of_services().items() for table in tables}
    owner.update({(tenant, t.table): service_of_tenant_table(t.namespace) for tenant in tenant_schemas for t in TENANT_DATA_TABLES})
    return {
        (role, schema, table): owner[(schema, table)] == service
        for service, role in config.service_roles.items()
        if roles is None or role in roles
        for schema, table in objects
    }


def privilege_problems(config: MigratorConfig, tenant_schemas: list[str], roles: list[str] | None = None,
                       service_tables: bool = True) -> list[str]:
    """Every (role, table) whose SELECT/INSERT/UPDATE/DELETE privilege is not what the matrix says."""
    expected = expected_matrix(config, tenant_schemas, roles, service_tables)
    rows = db.fetchall(
        "SELECT r, s, t, p, has_table_privilege(r, format('%%I.%%I', s, t), p) "
        "FROM unnest(%s::text[], %s::text[], %s::text[]) AS x(r, s, t), unnest(%s::text[]) AS p",
        [[k[0] for k in expected], [k[1] for k in expected], [k[2] for k in expected], list(TABLE_PRIVILEGES)],
    )
    problems = []
    for role, schema, table, privilege, actual in rows:
        if actual != expected[(role, schema, table)]:
            problems.append(f"{role} {'has' if actual else 'lacks'} {privilege} on {schema}.{table}")
    for role in roles if roles is not None else config.service_roles.values():
        public_tables = db.fetchvalue(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
            "AND c.relkind IN ('r', 'p', 'v') AND has_table_privilege(%s, c.oid, 'SELECT')", [role])
        if public_tables:
            problems.append(f"{role} can read {public_tables} tables in public")
        if db.fetchvalue("SELECT has_schema_privilege(%s, 'public', 'CREATE')", [role]):
            problems.append(f"{role} may create objects in public")
    return problems
