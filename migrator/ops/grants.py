"""Service roles and their grants: each service reaches exactly its own schema and tenant namespace.

Roles are NOLOGIN group roles (application logins are made members of them). Privileges are
granted per table, never with schema-wide defaults in tenant schemas: a tenant schema holds
tables of two services, and a default privilege would hand the other service's future tables over.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from psycopg import sql

from migrator import catalog, db
from migrator.config import MigratorConfig
from migrator.core.details import ServiceRoleDetails, read_details
from migrator.core.errors import MigrationError
from migrator.models import MigrationRecord, Status
from migrator.step_ref import StepRef
from migrator.tables import TENANT_DATA_TABLES
from migrator.tables import service_tables as tables_of_services
from salesflow.layout import NAMESPACE_SERVICE, is_tenant_schema_name

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True)
class Grant:
    role: str
    schema: str
    table: str


def service_of_tenant_table(namespace: str) -> str:
    """contact_data -> contact, activity_data -> activity; auth owns no tenant tables."""
    return NAMESPACE_SERVICE[namespace]


def creation_marker() -> str:
    """The comment phase 4 puts on a role it creates. Roles are cluster-wide: the database is part of it."""
    return f"service role created by the SalesFlow migrator for database {db.fetchvalue('SELECT current_database()')}"


def create_role(role: str) -> int:
    """A NOLOGIN role, marked as the migrator's in the same transaction; returns its oid.

    The mark covers an attempt killed between CREATE ROLE and its tracking row: the role is then
    still known as the migrator's own.
    """
    with transaction.atomic():
        db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        db.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(role), sql.Literal(creation_marker())))
    return int(catalog.role_oid(role) or 0)


def roles_created_by_migrator(roles: list[str], role_step: StepRef) -> list[str]:
    """Of ``roles``, those that exist and are the very roles phase 4 created in this database.

    The tracking history (kept across a restore) records each role phase 4 created with its oid (the
    records of ``role_step``, phase 4's): a
    role dropped and created again by someone else under the same name has another oid and is not
    the migrator's. A role carrying the creation mark of this database is the migrator's too.
    """
    recorded: dict[str, set[int]] = {}
    rows = (
        MigrationRecord.objects.of(role_step)
        .filter(target__in=roles)
        .exclude(status=Status.ROLLED_BACK)
        .values_list("target", "details")
    )
    for target, stored in rows:
        details = read_details(ServiceRoleDetails, stored)
        if details.get("created") and (oid := details.get("role_oid")):
            recorded.setdefault(target, set()).add(int(oid))
    marker = creation_marker()
    owned = []
    for role in roles:
        oid = catalog.role_oid(role)
        if oid is None:
            continue
        if oid in recorded.get(role, set()) or db.fetchvalue(
            "SELECT shobj_description(%s, 'pg_authid') = %s", [oid, marker]
        ):
            owned.append(role)
    return owned


def claim_service_role(role: str, adopt: bool, role_step: StepRef) -> ServiceRoleDetails:
    """Create the service role, or take an existing one if the migrator made it or ``adopt`` says so.

    Returns the tracking details: ``created`` (the migrator's: rollback drops it), ``adopted``
    (someone else's: rollback revokes the migrator's grants and never drops it), ``role_oid``.
    """
    if not catalog.role_exists(role):
        return ServiceRoleDetails(created=True, adopted=False, role_oid=create_role(role))
    if catalog.role_can_log_in(role):
        raise MigrationError(
            f"role {role} already exists and can log in (LOGIN or SUPERUSER); a service role must be a NOLOGIN "
            "group role: rename that role, or set SALESFLOW_ROLE_PREFIX to another prefix"
        )
    oid = catalog.role_oid(role)
    if role in roles_created_by_migrator([role], role_step):
        return ServiceRoleDetails(created=True, adopted=False, role_oid=oid)
    if adopt:
        return ServiceRoleDetails(created=False, adopted=True, role_oid=oid)
    raise MigrationError(
        f"role {role} already exists and the migrator did not create it: rename it, set SALESFLOW_ROLE_PREFIX "
        "to another prefix, or rerun with --adopt-roles to use it (rollback then never drops it)"
    )


def service_schema_statements(role: str, schema: str) -> list[sql.Composed]:
    """Usage on the schema, DML on its tables, its sequences, the same for tables created later; nothing in public."""
    r, s = sql.Identifier(role), sql.Identifier(schema)
    return [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(s, r),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, r),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}").format(
            s, r
        ),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT USAGE, SELECT ON SEQUENCES TO {}").format(s, r),
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(r),
    ]


def grant_service_schema(role: str, schema: str) -> int:
    # one round trip: the statements take no parameters (as the tenants' grants are sent)
    db.execute(sql.SQL("; ").join(service_schema_statements(role, schema)))
    return len(tables_of_services()[schema])


def grant_tenant_tables(config: MigratorConfig, tenant_schema: str, only_existing: bool = False) -> list[Grant]:
    """The grant matrix on the schema's namespaced tables (``only_existing``: skip tables not created yet).

    Two round trips whatever the number of tables: one catalog query for the tables and their id
    sequences, one batch of GRANT statements (with thousands of tenants, round trips are the cost).
    """
    return grant_tenant_tables_of([tenant_schema], config, only_existing)[tenant_schema]


def grant_tenant_tables_of(
    tenant_schemas: list[str], config: MigratorConfig, only_existing: bool = False
) -> dict[str, list[Grant]]:
    """:func:`grant_tenant_tables` for several schemas: still two round trips in all."""
    # The id sequence (serial or identity) of each table, as pg_get_serial_sequence finds it, through
    # pg_depend: no error for a table that does not exist yet.
    found: dict[tuple[str, str], tuple[bool, str | None]] = {
        (schema, table): (exists, sequence)
        for schema, table, exists, sequence in db.fetchall(
            "SELECT n.schema, t.name, c.oid IS NOT NULL, seq.relname FROM unnest(%s::text[]) n(schema) "
            "CROSS JOIN unnest(%s::text[]) t(name) "
            "LEFT JOIN pg_class c ON c.oid = to_regclass(format('%%I.%%I', n.schema, t.name)) "
            "LEFT JOIN LATERAL (SELECT s.relname FROM pg_attribute a JOIN pg_depend d "
            "ON d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum "
            "AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
            "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
            "WHERE a.attrelid = c.oid AND a.attname = 'id' LIMIT 1) seq ON true",
            [tenant_schemas, [t.table for t in TENANT_DATA_TABLES]],
        )
    }
    given: dict[str, list[Grant]] = {}
    statements: list[sql.Composable] = []
    for tenant_schema in tenant_schemas:
        given[tenant_schema] = _tenant_grant_statements(config, tenant_schema, found, only_existing, statements)
    if statements:
        db.execute(sql.SQL("; ").join(statements))
    return given


def _tenant_grant_statements(
    config: MigratorConfig,
    tenant_schema: str,
    found: dict[tuple[str, str], tuple[bool, str | None]],
    only_existing: bool,
    out: list[sql.Composable],
) -> list[Grant]:
    """Append one schema's GRANT statements to ``out``; returns its grants."""
    s = sql.Identifier(tenant_schema)
    grants: list[Grant] = []
    statements: list[sql.Composable] = []
    for table in TENANT_DATA_TABLES:
        exists, sequence = found.get((tenant_schema, table.table), (False, None))
        if only_existing and not exists:
            continue
        role = config.service_role(service_of_tenant_table(table.namespace))
        r = sql.Identifier(role)
        statements.append(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
                sql.Identifier(tenant_schema, table.table), r
            )
        )
        if sequence:
            # An owned sequence lives in its table's schema.
            statements.append(
                sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(sql.Identifier(tenant_schema, sequence), r)
            )
        grants.append(Grant(role, tenant_schema, table.table))
    if grants:
        roles = sql.SQL(", ").join(sql.Identifier(role) for role in dict.fromkeys(g.role for g in grants))
        statements.insert(0, sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, roles))
        out.extend(statements)
    return grants


def service_roles_in_place(config: MigratorConfig, role_step: StepRef) -> bool:
    """Phase 4 has completed its role steps (``role_step``; no rollback undid them) and the roles exist."""
    if not catalog.tracking_table_exists():
        return False  # a database the migrator has never run on
    latest = dict(MigrationRecord.objects.of(role_step).latest_attempts().values_list("target", "status"))
    return all(
        latest.get(role) == Status.COMPLETED and catalog.role_exists(role) for role in config.service_roles.values()
    )


def refuse_another_role_prefix(config: MigratorConfig, role_step: StepRef) -> None:
    """Phase 4 created its roles under another ``SALESFLOW_ROLE_PREFIX`` than this run's, and no rollback
    undid them: a run with this prefix would make roles without the grants (the tenants' grant steps are
    done) or drop none, and leave the others in place for good."""
    if not catalog.tracking_table_exists():
        return
    created = (
        MigrationRecord.objects.of(role_step)
        .latest_attempts()
        .filter(status=Status.COMPLETED)
        .values_list("target", flat=True)
    )
    ours = set(config.service_roles.values())
    other = sorted(role for role in created if role not in ours)
    if other:
        prefix = other[0].rsplit("_", 1)[0]
        raise MigrationError(
            f"phase security created role {other[0]} ({len(other)} in all) under SALESFLOW_ROLE_PREFIX={prefix}, "
            f"not {config.role_prefix}: run with SALESFLOW_ROLE_PREFIX={prefix}, or roll back with it first"
        )


def grant_after_schema_migration(config: MigratorConfig, schema: str, role_step: StepRef) -> list[Grant]:
    """django-tenants created or migrated ``schema``: once phase 4 has run, its new tables get the grant
    matrix too (per table, as phase 4 grants them). Before phase 4 there is nothing to grant to."""
    if not service_roles_in_place(config, role_step):
        return []
    if schema == "public":
        # Default privileges cover new service tables only when the same user runs the migration.
        for service, role in config.service_roles.items():
            if catalog.schema_exists(service):
                grant_service_schema(role, service)
        return []
    if not is_tenant_schema_name(schema) or not catalog.schema_exists(schema):
        return []
    return grant_tenant_tables(config, schema, only_existing=True)


def revoke_granted_privileges(role: str, tenant_usage_schemas: list[str]) -> None:
    """Take back what phase 4 granted ``role``: everything in the service schemas and on the namespaced
    tenant tables (objects the migration made), and USAGE on ``tenant_usage_schemas``.

    Never ``DROP OWNED``: that would also drop whatever the role owns, legacy schemas included.
    """
    r = sql.Identifier(role)
    for schema in tables_of_services():
        if not catalog.schema_exists(schema):
            continue
        s = sql.Identifier(schema)
        for statement in (
            "REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}",
            "REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {r}",
            "REVOKE ALL ON SCHEMA {s} FROM {r}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} REVOKE ALL ON TABLES FROM {r}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} REVOKE ALL ON SEQUENCES FROM {r}",
        ):
            db.execute(sql.SQL(statement).format(s=s, r=r))
    existing = catalog.tables_by_schema(catalog.schemas_like_tenants())
    for schema, tables in existing.items():
        for table in TENANT_DATA_TABLES:
            if table.table not in tables:
                continue
            db.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(schema, table.table), r))
            sequence = db.fetchone(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), 'id')::regclass",
                [schema, table.table],
            )
            if sequence:
                db.execute(sql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(sql.Identifier(*sequence), r))
        if schema in tenant_usage_schemas:
            db.execute(sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(sql.Identifier(schema), r))


def expected_matrix(
    config: MigratorConfig, tenant_schemas: list[str], roles: list[str] | None = None, service_tables: bool = True
) -> dict[tuple[str, str, str], bool]:
    """(role, schema, table) -> may the role use it. Service tables and the tenants' tables, for ``roles``."""
    objects = (
        [(schema, table) for schema, tables in tables_of_services().items() for table in tables]
        if service_tables
        else []
    )
    objects += [(tenant, t.table) for tenant in tenant_schemas for t in TENANT_DATA_TABLES]
    owner = {(schema, table): schema for schema, tables in tables_of_services().items() for table in tables}
    owner.update(
        {
            (tenant, t.table): service_of_tenant_table(t.namespace)
            for tenant in tenant_schemas
            for t in TENANT_DATA_TABLES
        }
    )
    return {
        (role, schema, table): owner[(schema, table)] == service
        for service, role in config.service_roles.items()
        if roles is None or role in roles
        for schema, table in objects
    }


def privilege_problems(
    config: MigratorConfig,
    tenant_schemas: list[str],
    roles: list[str] | None = None,
    service_tables: bool = True,
    public: bool = True,
) -> list[str]:
    """Every (role, table) whose SELECT/INSERT/UPDATE/DELETE privilege is not what the matrix says.

    ``public``: also that the roles can read nothing in public and create nothing there (a check of
    the roles, not of a tenant: a tenant's grants cannot change it).
    """
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
    for role in (roles if roles is not None else config.service_roles.values()) if public else ():
        public_tables = db.fetchvalue(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
            "AND c.relkind IN ('r', 'p', 'v') AND has_table_privilege(%s, c.oid, 'SELECT')",
            [role],
        )
        if public_tables:
            problems.append(f"{role} can read {public_tables} tables in public")
        if db.fetchvalue("SELECT has_schema_privilege(%s, 'public', 'CREATE')", [role]):
            problems.append(f"{role} may create objects in public")
    return problems
