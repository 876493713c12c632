"""Phase 5's checks. Each returns the problems it found (empty: fine) plus what it measured."""

from __future__ import annotations

import json
from typing import Any

from django.apps import apps
from django.db import DatabaseError, transaction
from django.utils import timezone
from django_tenants.utils import schema_context
from psycopg import sql

from migrator import catalog, db
from migrator.config import MigratorConfig
from migrator.tables import TENANT_DATA_TABLES, TableKind, legacy_table, service_tables
from salesflow.layout import TENANT_SCHEMA_PREFIX

# The plan's "Verify Schema Migration" query, as written there (it needs no identifiers).
PLAN_SCHEMA_QUERY = (
    "SELECT schema_name FROM information_schema.schemata "
    "WHERE schema_name IN ('public', 'auth', 'contact', 'activity') OR schema_name LIKE 'tenant\\_%%'"
)
# The plan's count query cannot work: it builds an identifier from a string at run time. This
# version lets the server quote the names (format %I) inside a session-local helper function.
COUNT_FUNCTION = (
    "CREATE OR REPLACE FUNCTION pg_temp.salesflow_count_rows(schema_name text, table_name text) "
    "RETURNS bigint LANGUAGE plpgsql AS $$ DECLARE n bigint; BEGIN "
    "EXECUTE format('SELECT count(*) FROM %I.%I', schema_name, table_name) INTO n; RETURN n; END $$"
)


def row_counts_query() -> sql.Composed:
    """Rows of every tenant-data table of each given tenant, one column per table (its legacy name).

    The plan's query reads active tenants only; inactive tenants are migrated too (they stay inactive),
    so the tenants asked for are counted whatever their flag.

    Parameters: the target table names (in ``TENANT_DATA_TABLES`` order), then the tenant ids.
    """
    counts = sql.SQL(", ").join(
        sql.SQL("pg_temp.salesflow_count_rows(t.schema_name, %s) AS {}").format(sql.Identifier(t.legacy_table))
        for t in TENANT_DATA_TABLES
    )
    return sql.SQL(
        "SELECT t.tenant_id, {} FROM public.tenants t WHERE t.tenant_id = ANY(%s) ORDER BY t.tenant_id"
    ).format(counts)


# The application's key lookups: name -> (legacy name of the tenant-data table, query, parameters).
KEY_LOOKUPS: dict[str, tuple[str, str, list[Any]]] = {
    "contact by email": ("contacts", "SELECT id FROM {} WHERE email = %s", ["someone@example.com"]),
    "activities by contact": ("activities", "SELECT id FROM {} WHERE contact_id = %s", [1]),
    "activities by due date": (
        "activities",
        "SELECT id FROM {} WHERE due_at >= %s AND due_at < %s",
        ["2021-01-01T00:00:00Z", "2021-02-01T00:00:00Z"],
    ),
}


def schema_problems(tenant_schemas: list[str]) -> tuple[list[str], dict[str, Any]]:
    found = {row[0] for row in db.fetchall(PLAN_SCHEMA_QUERY, [])}
    expected = {"public", *service_tables(), *tenant_schemas}
    problems = [f"schema {name} is missing" for name in sorted(expected - found)]
    tables = catalog.tables_by_schema(list(service_tables()))
    problems += [
        f"table {schema}.{table} is missing"
        for schema, names in service_tables().items()
        for table in names
        if table not in tables[schema]
    ]
    stray = db.fetchall(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_name = ANY(%s)",
        [[t for names in service_tables().values() for t in names] + [t.table for t in TENANT_DATA_TABLES]],
    )
    problems += [f"service table {row[0]} found in public" for row in stray]
    return problems, {
        "schemas": sorted(n for n in found if not n.startswith(TENANT_SCHEMA_PREFIX)),
        "tenant_schemas": len([n for n in found if n.startswith(TENANT_SCHEMA_PREFIX)]),
    }


def row_counts(tenant_ids: list[str]) -> dict[str, dict[str, int]]:
    # Created once per session: CREATE OR REPLACE per call (once per tenant) writes the catalog every time.
    if not db.fetchvalue("SELECT to_regprocedure('pg_temp.salesflow_count_rows(text, text)') IS NOT NULL"):
        db.execute(COUNT_FUNCTION)
    rows = db.fetchall(row_counts_query(), [*(t.table for t in TENANT_DATA_TABLES), tenant_ids])
    names = [t.legacy_table for t in TENANT_DATA_TABLES]
    return {tenant_id: dict(zip(names, counts, strict=True)) for tenant_id, *counts in rows}


def tenant_table_problems(schema: str) -> list[str]:
    # The catalog keyed by schema: information_schema.tables reads every tenant's tables to find one schema's.
    present = catalog.tables_by_schema([schema])[schema]
    return [f"{schema}.{t.table} is missing" for t in TENANT_DATA_TABLES if t.table not in present]


def _denied(role: str, schema: str, table: str) -> bool:
    """Does ``role`` get 'permission denied' reading schema.table? (SET LOCAL ROLE in a savepoint)."""
    try:
        with transaction.atomic():
            db.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            db.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(schema, table)))
            transaction.set_rollback(True)
        return False
    except DatabaseError as exc:
        if "permission denied" in str(exc):
            return True
        raise


def role_isolation_problems(config: MigratorConfig, objects: list[tuple[str, str, str]]) -> list[str]:
    """``objects``: (owning service, schema, table). Each role must read its own and be refused the rest."""
    problems = []
    missing = catalog.missing_roles(list(config.service_roles.values()))
    for service, role in config.service_roles.items():
        if role in missing:
            problems.append(f"role {role} does not exist (run phase 4)")
            continue
        for owner, schema, table in objects:
            denied = _denied(role, schema, table)
            if owner == service and denied:
                problems.append(f"{role} cannot read its own table {schema}.{table}")
            elif owner != service and not denied:
                problems.append(f"{role} can read {schema}.{table}, which belongs to the {owner} service")
    return problems


def tenant_context_problems(schema: str, other_schemas: list[str]) -> tuple[list[str], dict[str, int]]:
    """In the tenant's ORM context every row read comes from its own schema; other tenants are unreachable."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    with schema_context(schema):
        for model in (apps.get_model(t.model) for t in TENANT_DATA_TABLES):
            table = model._meta.db_table
            foreign_rows = db.fetchvalue(
                sql.SQL("SELECT count(*) FILTER (WHERE tableoid <> {oid}) FROM {table}").format(
                    oid=catalog.RELATION_OID, table=sql.Identifier(table)
                ),
                [schema, table],
            )
            search_path = db.fetchvalue("SHOW search_path")
            seen[table] = model.objects.count()
            if foreign_rows:
                problems.append(f"{foreign_rows} rows of another schema visible as {table} in {schema}'s context")
            leaked = [other for other in other_schemas if other in search_path]
            if leaked:
                problems.append(f"search_path of {schema}'s context includes {', '.join(leaked)}")
    direct = {t.table: catalog.row_count(schema, t.table) for t in TENANT_DATA_TABLES}
    for table, count in seen.items():
        if direct[table] != count:
            problems.append(f"ORM sees {count} rows in {table}, the schema holds {direct[table]}")
    return problems, seen


def _plan_uses_index(plan: Any) -> bool:
    if isinstance(plan, dict):
        if "Index" in str(plan.get("Node Type", "")):
            return True
        return any(_plan_uses_index(v) for v in plan.values())
    if isinstance(plan, list):
        return any(_plan_uses_index(v) for v in plan)
    return False


def index_usage_problems(schema: str) -> tuple[list[str], dict[str, bool]]:
    """EXPLAIN each key lookup with sequential scans discouraged: an index must be able to serve it.

    Small tables make the planner prefer a sequential scan whatever indexes exist, so the check asks
    whether an index *can* serve the lookup, which is what a missing or unusable index breaks.
    """
    used: dict[str, bool] = {}
    with transaction.atomic(), db.local_settings(enable_seqscan="off"):
        for name, (legacy_name, query, params) in KEY_LOOKUPS.items():
            table = legacy_table(legacy_name, TableKind.TENANT_DATA).table
            explain = sql.SQL("EXPLAIN (FORMAT JSON) ") + sql.SQL(query).format(sql.Identifier(schema, table))
            plan = db.fetchvalue(explain, params)
            used[name] = _plan_uses_index(json.loads(plan) if isinstance(plan, str) else plan)
    return [f"{name} does not use an index in {schema}" for name, ok in used.items() if not ok], used


def crud_problems(schema: str) -> list[str]:
    """Create, read, update and delete a contact and an activity through the ORM, then roll it all back."""
    from salesflow.activity.models import ActivityType
    from salesflow.activity_data.models import Activity
    from salesflow.contact.models import ContactType
    from salesflow.contact_data.models import Contact

    problems: list[str] = []
    with transaction.atomic(), schema_context(schema):
        now = timezone.now()
        contact = Contact.objects.create(
            first_name="Verify",
            last_name="Ünïcode ✓",
            created_at=now,
            contact_type=ContactType.objects.first(),
            custom_fields={"check": True},
        )
        activity_type = ActivityType.objects.first()
        if Contact.objects.get(pk=contact.pk).last_name != "Ünïcode ✓":
            problems.append("contact read back differs")
        Contact.objects.filter(pk=contact.pk).update(company="Verified Inc")
        if Contact.objects.get(pk=contact.pk).company != "Verified Inc":
            problems.append("contact update not visible")
        if activity_type is not None:
            activity = Activity.objects.create(
                contact=contact, activity_type=activity_type, subject="verify", created_at=now
            )
            contact.delete()  # the database cascades to the activity
            if Activity.objects.filter(pk=activity.pk).exists():
                problems.append("deleting a contact left its activity behind")
        else:
            contact.delete()
        if Contact.objects.filter(pk=contact.pk).exists():
            problems.append("contact delete not visible")
        transaction.set_rollback(True)
    return problems
