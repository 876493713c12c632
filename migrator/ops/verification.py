"""Phase 5's checks. Each returns the problems it found (empty: fine) plus what it measured."""

from __future__ import annotations

import json
from collections.abc import Collection
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from django.apps import apps
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context
from psycopg import sql

from migrator import catalog, db
from migrator.config import MigratorConfig
from migrator.core.details import CheckDetails
from migrator.ops import twoway
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


# Does a role get 'permission denied' reading a table? Asked of the server itself (SET ROLE, then a
# read), in a subtransaction that is always rolled back: the role switch ends with it. One call per
# (role, schema, table), so a whole batch's isolation is one query instead of a savepoint per read.
DENIED_FUNCTION = (
    "CREATE OR REPLACE FUNCTION pg_temp.salesflow_denied(role_name text, schema_name text, table_name text) "
    "RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
    "EXECUTE format('SET LOCAL ROLE %I', role_name); "
    "EXECUTE format('SELECT 1 FROM %I.%I LIMIT 1', schema_name, table_name); "
    "RAISE SQLSTATE 'SF001'; "
    "EXCEPTION WHEN insufficient_privilege THEN RETURN true; WHEN SQLSTATE 'SF001' THEN RETURN false; END $$"
)
# The plan of one query with sequential scans discouraged (the setting holds for the call only).
PLAN_FUNCTION = (
    "CREATE OR REPLACE FUNCTION pg_temp.salesflow_plan(query text) RETURNS json LANGUAGE plpgsql "
    "SET enable_seqscan = off AS $$ DECLARE plan json; BEGIN "
    "EXECUTE 'EXPLAIN (FORMAT JSON) ' || query INTO plan; RETURN plan; END $$"
)
# Session-local helper functions (pg_temp), created once per connection.
SESSION_FUNCTIONS = {
    "pg_temp.salesflow_count_rows(text, text)": COUNT_FUNCTION,
    "pg_temp.salesflow_denied(text, text, text)": DENIED_FUNCTION,
    "pg_temp.salesflow_plan(text)": PLAN_FUNCTION,
}


def ensure_session_functions() -> None:
    """Create the helper functions this session lacks: one query when it has them all.

    CREATE OR REPLACE per call (once per tenant) would write the catalog every time."""
    checks = sql.SQL(", ").join(sql.SQL("to_regprocedure(%s) IS NULL") for _ in SESSION_FUNCTIONS)
    missing = db.fetchone(sql.SQL("SELECT {}").format(checks), list(SESSION_FUNCTIONS)) or ()
    for is_missing, statement in zip(missing, SESSION_FUNCTIONS.values(), strict=True):
        if is_missing:
            db.execute(statement)


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


# The application's key lookups: name -> (legacy name of the tenant-data table, query, values). The
# query is a template of the server's format(): the schema and table go in as %I, the values as %L.
KEY_LOOKUPS: dict[str, tuple[str, str, list[str]]] = {
    "contact by email": ("contacts", "SELECT id FROM %I.%I WHERE email = %L", ["someone@example.com"]),
    "activities by contact": ("activities", "SELECT id FROM %I.%I WHERE contact_id = %L", ["1"]),
    "activities by due date": (
        "activities",
        "SELECT id FROM %I.%I WHERE due_at >= %L AND due_at < %L",
        ["2021-01-01T00:00:00Z", "2021-02-01T00:00:00Z"],
    ),
}


def schema_problems(tenant_schemas: list[str]) -> tuple[list[str], CheckDetails]:
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
    return problems, CheckDetails(
        schemas=sorted(n for n in found if not n.startswith(TENANT_SCHEMA_PREFIX)),
        tenant_schemas=len([n for n in found if n.startswith(TENANT_SCHEMA_PREFIX)]),
    )


# Tenants counted per statement: a statement keeps every table it read locked until its transaction
# ends, and ten thousand tenants' tables in one would not fit the server's lock table.
TENANTS_PER_COUNT = 500


def row_counts(tenant_ids: list[str]) -> dict[str, dict[str, int]]:
    ensure_session_functions()
    names = [t.legacy_table for t in TENANT_DATA_TABLES]
    counts: dict[str, dict[str, int]] = {}
    for start in range(0, len(tenant_ids), TENANTS_PER_COUNT):
        batch = tenant_ids[start : start + TENANTS_PER_COUNT]
        rows = db.fetchall(row_counts_query(), [*(t.table for t in TENANT_DATA_TABLES), batch])
        counts.update({tenant_id: dict(zip(names, found, strict=True)) for tenant_id, *found in rows})
    return counts


def missing_tenant_tables(schemas: list[str]) -> dict[str, list[str]]:
    """Schema -> the tenant-data tables (ordinary or partitioned) it does not hold, in registry order;
    one query for all of ``schemas``. Each table is looked up by its qualified name (an index lookup):
    a scan of the catalog for the schemas' tables grows with the tenants."""
    rows = db.fetchall(
        "SELECT s, t FROM unnest(%s::text[]) s, unnest(%s::text[]) WITH ORDINALITY AS x(t, n) "
        "WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = to_regclass(format('%%I.%%I', s, t)) "
        "AND c.relkind IN ('r', 'p')) ORDER BY s, n",
        [schemas, [t.table for t in TENANT_DATA_TABLES]],
    )
    missing: dict[str, list[str]] = {schema: [] for schema in schemas}
    for schema, table in rows:
        missing[schema].append(table)
    return missing


def tenant_table_problems(schema: str, missing: list[str]) -> list[str]:
    """``missing``: what :func:`missing_tenant_tables` found for ``schema``."""
    return [f"{schema}.{table} is missing" for table in missing]


def denied(objects: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], bool]:
    """(role, schema, table) -> does the role get 'permission denied' reading the table? One query.

    A table that does not exist is an error, as reading it would be."""
    if not objects:
        return {}
    ensure_session_functions()
    rows = db.fetchall(
        "SELECT o.r, o.s, o.t, pg_temp.salesflow_denied(o.r, o.s, o.t) "
        "FROM unnest(%s::text[], %s::text[], %s::text[]) o(r, s, t)",
        [[o[0] for o in objects], [o[1] for o in objects], [o[2] for o in objects]],
    )
    return {(role, schema, table): bool(refused) for role, schema, table, refused in rows}


def role_isolation_problems(
    config: MigratorConfig,
    objects: list[tuple[str, str, str]],
    refused: dict[tuple[str, str, str], bool] | None = None,
    missing: list[str] | None = None,
) -> list[str]:
    """``objects``: (owning service, schema, table). Each role must read its own and be refused the rest.

    ``refused`` and ``missing``: what :func:`denied` and the missing roles were found to be (read for
    several tenants at once); asked here when not given."""
    problems = []
    if missing is None:
        missing = catalog.missing_roles(list(config.service_roles.values()))
    present = [(service, role) for service, role in config.service_roles.items() if role not in missing]
    if refused is None:
        refused = denied([(role, schema, table) for _service, role in present for _owner, schema, table in objects])
    for service, role in config.service_roles.items():
        if role in missing:
            problems.append(f"role {role} does not exist (run phase 4)")
            continue
        for owner, schema, table in objects:
            is_denied = refused[(role, schema, table)]
            if owner == service and is_denied:
                problems.append(f"{role} cannot read its own table {schema}.{table}")
            elif owner != service and not is_denied:
                problems.append(f"{role} can read {schema}.{table}, which belongs to the {owner} service")
    return problems


def in_schema(schema: str) -> AbstractContextManager[None]:
    """``schema``'s ORM context; the one the connection is in already when it is that one (entering it
    again would make the next query set the search_path again)."""
    current = getattr(connection, "schema_name", None), getattr(connection, "include_public_schema", None)
    if current == (schema, True):
        return nullcontext()
    return schema_context(schema)


def tenant_context_problems(
    schema: str, tenant_schemas: Collection[str], direct: dict[str, int] | None = None
) -> tuple[list[str], dict[str, int]]:
    """In the tenant's ORM context every row read comes from its own schema; other tenants' schemas
    (``tenant_schemas``: every tenant's, its own included) are not on its search_path.

    ``direct``: the rows of each table counted in the schema by name (read for several tenants at
    once); counted here when not given."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    models = [apps.get_model(t.model) for t in TENANT_DATA_TABLES]
    tables = [model._meta.db_table for model in models]
    with in_schema(schema):
        # The tables by their bare names, as the ORM finds them: rows of another table must not show.
        foreign = sql.SQL(", ").join(
            sql.SQL("(SELECT count(*) FILTER (WHERE tableoid <> {oid}) FROM {table})").format(
                oid=catalog.RELATION_OID, table=sql.Identifier(table)
            )
            for table in tables
        )
        row = db.fetchone(
            sql.SQL("SELECT current_setting('search_path'), {}").format(foreign),
            [value for table in tables for value in (schema, table)],
        )
        assert row is not None  # a SELECT without FROM returns its one row
        search_path, *foreign_rows = row
        for model, table, rows in zip(models, tables, foreign_rows, strict=True):
            seen[table] = model.objects.count()
            if rows:
                problems.append(f"{rows} rows of another schema visible as {table} in {schema}'s context")
        # The path's schemas by name (not by substring: tenant_a is not in "tenant_ab"); a set to look
        # them up in, since with thousands of tenants a scan of the list per tenant adds up.
        on_path = [part.strip().strip('"') for part in search_path.split(",")]
        leaked = [other for other in on_path if other != schema and other in tenant_schemas]
        if leaked:
            problems.append(f"search_path of {schema}'s context includes {', '.join(leaked)}")
    if direct is None:
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


def index_usage_by_schema(schemas: list[str]) -> dict[str, dict[str, bool]]:
    """EXPLAIN each key lookup in each schema with sequential scans discouraged: can an index serve it?
    One query for all of them.

    Small tables make the planner prefer a sequential scan whatever indexes exist, so the check asks
    whether an index *can* serve the lookup, which is what a missing or unusable index breaks.
    """
    if not schemas:
        return {}
    ensure_session_functions()
    lookups = [
        (schema, name, legacy_table(legacy_name, TableKind.TENANT_DATA).table, template, values)
        for schema in schemas
        for name, (legacy_name, template, values) in KEY_LOOKUPS.items()
    ]
    rows = db.fetchall(
        "SELECT l.s, l.name, pg_temp.salesflow_plan(format(l.template, VARIADIC ARRAY[l.s, l.t] || "
        "ARRAY(SELECT jsonb_array_elements_text(l.vals)))) "
        "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[]) l(s, name, t, template, vals)",
        [[lookup[i] for lookup in lookups] for i in range(4)] + [[json.dumps(lookup[4]) for lookup in lookups]],
    )
    used: dict[str, dict[str, bool]] = {schema: {} for schema in schemas}
    for schema, name, plan in rows:
        used[schema][name] = _plan_uses_index(json.loads(plan) if isinstance(plan, str) else plan)
    return used


def index_usage_problems(schema: str, used: dict[str, bool] | None = None) -> tuple[list[str], dict[str, bool]]:
    """``used``: what :func:`index_usage_by_schema` found for ``schema``; asked here when not given."""
    if used is None:
        used = index_usage_by_schema([schema])[schema]
    return [f"{name} does not use an index in {schema}" for name, ok in used.items() if not ok], used


def crud_types() -> tuple[Any, Any]:
    """The contact and activity types the smoke test uses (service tables: the same for every tenant)."""
    from salesflow.activity.models import ActivityType
    from salesflow.contact.models import ContactType

    return ContactType.objects.first(), ActivityType.objects.first()


def _constraint_name(exc: DatabaseError) -> str | None:
    return getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)


def crud_problems(
    schema: str,
    types: tuple[Any, Any] | None = None,
    tenant_rules: frozenset[str] = frozenset(),
    synced: bool = False,
) -> list[str]:
    """Create, read, update and delete a contact and an activity through the ORM, then roll it all back.

    Only the tenant's new tables are written (the ORM's models are theirs): the rows go with the
    rollback; the ids the inserts draw are the new tables' own (gaps, as after any rolled-back insert).
    A failure is one problem naming the tenant's table it happened on.

    ``types``: :func:`crud_types`, read once for several tenants; read here when not given.
    ``tenant_rules``: constraints carried from the tenant's legacy tables; the smoke row breaking one of
    them is raised as the IntegrityError it is (the caller decides), not reported as a problem."""
    from salesflow.activity_data.models import Activity
    from salesflow.contact_data.models import Contact

    contacts, activities = Contact._meta.db_table, Activity._meta.db_table
    problems: list[str] = []
    table = contacts  # the table the statement running now writes or reads
    try:
        with transaction.atomic(), in_schema(schema):
            if synced:  # in two-way sync: rolled back anyway, the legacy side is not written
                db.execute(twoway.SKIP_SYNC_IN_TRANSACTION)
            contact_type, activity_type = types if types is not None else crud_types()
            now = timezone.now()
            contact = Contact.objects.create(
                first_name="Verify",
                last_name="Ünïcode ✓",
                created_at=now,
                contact_type=contact_type,
                custom_fields={"check": True},
            )
            contact_id = contact.pk  # delete() clears it
            if Contact.objects.get(pk=contact_id).last_name != "Ünïcode ✓":
                problems.append(f"{schema}.{contacts}: contact read back differs")
            Contact.objects.filter(pk=contact.pk).update(company="Verified Inc")
            if Contact.objects.get(pk=contact.pk).company != "Verified Inc":
                problems.append(f"{schema}.{contacts}: contact update not visible")
            if activity_type is not None:
                table = activities
                activity = Activity.objects.create(
                    contact=contact, activity_type=activity_type, subject="verify", created_at=now
                )
                table = contacts
                contact.delete()  # the database cascades to the activity
                if Activity.objects.filter(pk=activity.pk).exists():
                    problems.append(f"{schema}.{activities}: deleting a contact left its activity behind")
            else:
                contact.delete()
            if Contact.objects.filter(pk=contact_id).exists():
                problems.append(f"{schema}.{contacts}: contact delete not visible")
            transaction.set_rollback(True)
    except DatabaseError as exc:  # the transaction is rolled back: nothing it wrote stays
        if isinstance(exc, IntegrityError) and _constraint_name(exc) in tenant_rules:
            raise
        text = str(exc).strip()
        line = text.splitlines()[0] if text else type(exc).__name__
        problems.append(
            columns_unlike_the_model(schema, table, Contact if table == contacts else Activity)
            or f"{schema}.{table}: create, read, update, delete through the ORM failed: {line}"
        )
    return problems


def columns_unlike_the_model(schema: str, table: str, model: Any) -> str:
    """Why this release's ORM cannot write ``schema.table`` when the table's columns are not the model's
    (a deploy of another release, applied there or not yet); empty when they agree.

    Asked only after the smoke failed: the catalog is not read for a tenant whose smoke passes.
    """
    found = catalog.columns(schema, table)
    known = {f.column for f in model._meta.local_concrete_fields}
    missing = sorted(known - {c.name for c in found})
    if missing:
        return (
            f"{schema}.{table} lacks the column(s) {', '.join(missing)} of this release's model: the release's "
            "migrations are not applied there; run migrate_schemas, then verify again"
        )
    unknown = [c.name for c in found if not c.nullable and not c.has_default and c.name not in known]
    if unknown:
        return (
            f"{schema}.{table}.{', '.join(unknown)}: NOT NULL without a database default and unknown to this "
            "release's model, so its inserts fail: run verify from the release whose migration added the column "
            "(or give the column a database default)"
        )
    return ""
