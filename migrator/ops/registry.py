"""Adopting a legacy ``public.tenants`` as the tenant registry.

A legacy database may already have a ``public.tenants`` (the plan's count query reads one with
``tenant_id`` and ``active``). The registry's Django migration cannot create its table over it, so
before the registry is built the legacy table is checked, moved into the archive schema (kept as it
was: nothing lost, and what rollback or an audit can look at), the registry is created, and the
legacy rows become its rows: ids, names and the ``active`` flag kept, every other legacy column added
to the registry (nullable, so Django can still create tenants) with its values. All of it is one
transaction: a failure or a kill leaves the legacy table where it was.
"""

from __future__ import annotations

from typing import Any, LiteralString

from django.db import transaction
from psycopg import sql

from migrator import db
from migrator.core.errors import MigrationError
from migrator.django_migrations import BOOTSTRAP_APPS, legacy_registry_present, migrate_schema
from migrator.ops import archive
from salesflow.layout import TENANT_ID_PATTERN, TENANT_SCHEMA_LIKE, TENANT_SCHEMA_PREFIX

REGISTRY_SCHEMA, REGISTRY_TABLE = "public", "tenants"
INTEGER_TYPES = ("smallint", "integer", "bigint")


def _refuse(reason: str) -> MigrationError:
    return MigrationError(f"cannot adopt the existing public.tenants as the tenant registry: {reason}")


def _column_types() -> dict[str, str]:
    rows = db.fetchall(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = 'public.tenants'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    )
    return dict(rows)


def _check(columns: dict[str, str]) -> None:
    """Refuse, naming the first thing that cannot become a registry row."""
    if "tenant_id" not in columns:
        raise _refuse("it has no tenant_id column; rename the table or add the column")
    if "active" in columns and columns["active"] != "boolean":
        raise _refuse(f"its active column is {columns['active']}, not boolean")
    if "id" in columns and columns["id"] not in INTEGER_TYPES:
        raise _refuse(f"its id column is {columns['id']}, not an integer; rename that column")
    checks: list[tuple[str, str]] = [
        (
            "tenant ids that are not valid (^[a-z][a-z0-9_]{0,55}$)",
            "SELECT tenant_id::text FROM public.tenants WHERE tenant_id IS NULL OR tenant_id::text !~ %(pattern)s",
        ),
        ("duplicate tenant ids", "SELECT tenant_id::text FROM public.tenants GROUP BY 1 HAVING count(*) > 1"),
        (
            "tenants with no schema tenant_<id> (delete the row or restore the schema)",
            (
                "SELECT tenant_id::text FROM public.tenants t WHERE NOT EXISTS "
                "(SELECT FROM pg_namespace n WHERE n.nspname = %(prefix)s || t.tenant_id::text)"
            ),
        ),
    ]
    if "active" in columns:
        checks.append(
            ("tenants whose active flag is NULL", "SELECT tenant_id::text FROM public.tenants WHERE active IS NULL")
        )
    if "schema_name" in columns:
        checks.append(
            (
                "tenants whose schema_name is not tenant_<tenant_id>",
                (
                    "SELECT tenant_id::text FROM public.tenants WHERE schema_name IS DISTINCT FROM "
                    "%(prefix)s || tenant_id::text"
                ),
            )
        )
    for what, query in checks:
        found = [
            row[0]
            for row in db.fetchall(
                query + " ORDER BY 1 LIMIT 6", {"pattern": TENANT_ID_PATTERN, "prefix": TENANT_SCHEMA_PREFIX}
            )
        ]
        if found:
            listed = ", ".join(repr(value) for value in found[:5]) + (", ..." if len(found) > 5 else "")
            raise _refuse(f"{what}: {listed}; fix those rows and run again")


def adopt_legacy_registry(archive_schema: str) -> dict[str, Any] | None:
    """Adopt a legacy ``public.tenants`` if there is one, building the registry (the Django migrations
    of public) over it; returns what was done (None: nothing to adopt).

    Adopted rows are REGISTERED: they are legacy tenants (their schemas exist), never NEW ones.
    """
    if not legacy_registry_present():
        return None
    from tenants.models import MigrationState, Tenant

    registry_columns = [f.column for f in Tenant._meta.concrete_fields]
    adopted_state = MigrationState.REGISTERED.value
    columns = _column_types()
    _check(columns)
    rows = int(db.fetchvalue("SELECT count(*) FROM public.tenants"))
    with transaction.atomic():
        archive.ensure_archive_schema(archive_schema)
        moved = archive.archive_tables(REGISTRY_SCHEMA, REGISTRY_SCHEMA, [REGISTRY_TABLE], archive_schema, drop=False)
        kept_as = moved[REGISTRY_TABLE]
        legacy = sql.Identifier(archive_schema, kept_as.split(".", 1)[1])
        applied = migrate_schema("public", BOOTSTRAP_APPS)
        extra = [name for name in columns if name not in registry_columns]
        for name in extra:  # nullable: Django creates new tenants without knowing these columns
            # The type is format_type()'s rendering from the catalog (quoted by the server where needed).
            db.execute(
                sql.SQL("ALTER TABLE public.tenants ADD COLUMN {} {}").format(
                    sql.Identifier(name), sql.SQL(columns[name])
                )
            )
        values: dict[str, sql.Composable] = {
            "tenant_id": sql.SQL("l.tenant_id::text"),
            "schema_name": sql.SQL("{} || l.tenant_id::text").format(sql.Literal(TENANT_SCHEMA_PREFIX)),
            "name": sql.SQL("initcap(replace(l.tenant_id::text, '_', ' '))"),
            "active": sql.SQL("true"),
            "migration_state": sql.Literal(adopted_state),
            "created_at": sql.SQL("now()"),
            "updated_at": sql.SQL("now()"),
        }
        if "name" in columns:
            values["name"] = sql.SQL("coalesce(l.name::text, {})").format(values["name"])
        for kept in ("id", "active", "created_at", "updated_at"):
            if kept in columns:
                values[kept] = sql.SQL("l.{}").format(sql.Identifier(kept))
        for name in extra:
            values[name] = sql.SQL("l.{}").format(sql.Identifier(name))
        targets = [name for name in values if name in registry_columns or name in extra]
        db.execute(
            sql.SQL("INSERT INTO public.tenants ({}) SELECT {} FROM {} l").format(
                db.ident_list(targets), sql.SQL(", ").join(values[name] for name in targets), legacy
            )
        )
        if "id" in columns:  # new tenants continue after the adopted ids
            db.execute(
                "SELECT setval(pg_get_serial_sequence('public.tenants', 'id'), "
                "coalesce((SELECT max(id) FROM public.tenants), 0) + 1, false)"
            )
    return {"rows": rows, "kept_as": kept_as, "extra_columns": extra, "migrations_applied": applied}


# Schemas holding one of the legacy tables (%s: their names): the catalog's (relname, relnamespace) index serves it.
_HOLDS_LEGACY_TABLE = sql.SQL(
    "EXISTS (SELECT 1 FROM pg_class c WHERE c.relname = ANY(%s) AND c.relnamespace = n.oid AND c.relkind IN ('r', 'p'))"
)


def new_tenants_with_legacy_tables(
    legacy_tables: list[str], registry_table: str, new_state: str, limit: int = 1000
) -> list[str]:
    """Schemas of tenants registered as created in the target layout (``new_state``) that hold a legacy
    table all the same: registered by the application after phase 1 (a schema the old application made
    in an online window, say), which the phases leave out as having nothing to migrate. One query."""
    return _schema_names(
        "SELECT t.schema_name FROM {registry} t JOIN pg_namespace n ON n.nspname = t.schema_name "
        "WHERE t.migration_state = %s AND {holds} ORDER BY 1 LIMIT %s",
        registry_table,
        [new_state, legacy_tables, limit],
    )


def unregistered_legacy_schemas(legacy_tables: list[str], registry_table: str, limit: int = 1000) -> list[str]:
    """Tenant schemas holding a legacy table that no registry row names: created since phase 1 (during an
    online window, say), never migrated. One query."""
    return _schema_names(
        "SELECT n.nspname FROM pg_namespace n WHERE n.nspname LIKE %s AND {holds} "
        "AND NOT EXISTS (SELECT 1 FROM {registry} t WHERE t.schema_name = n.nspname) ORDER BY 1 LIMIT %s",
        registry_table,
        [TENANT_SCHEMA_LIKE, legacy_tables, limit],
    )


def _schema_names(query: LiteralString, registry_table: str, params: list[object]) -> list[str]:
    """The schema names ``query`` returns, given the registry table (``{registry}``) and the condition that a
    schema ``n`` holds a legacy table (``{holds}``)."""
    rows = db.fetchall(
        sql.SQL(query).format(registry=sql.Identifier("public", registry_table), holds=_HOLDS_LEGACY_TABLE), params
    )
    return [r[0] for r in rows]
