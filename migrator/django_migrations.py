"""Django migrations for one schema, the way django-tenants' ``migrate_schemas`` applies them."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol, cast

from django.core.management.sql import emit_post_migrate_signal
from django.db import DEFAULT_DB_ALIAS, connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.migration import Migration
from django.db.migrations.recorder import MigrationRecorder
from django.db.migrations.state import ProjectState
from psycopg import sql

from migrator import db

# Apps the engine needs in public before it can record anything: the registry and the tracking table.
TRACKING_APPS: tuple[str, ...] = ("tenants", "migrator")
# What else lives in public (the admin's users, permissions, sessions, failed logins): phase 1's
# bootstrap step. The admin site's login needs every one of them.
BOOTSTRAP_APPS: tuple[str, ...] = ("contenttypes", "auth", "admin", "sessions", "axes", *TRACKING_APPS)


class SchemaSwitching(Protocol):
    """What django-tenants' database wrapper adds (it ships no type information)."""

    def set_schema(self, schema_name: str, include_public: bool = True) -> None: ...

    def set_schema_to_public(self) -> None: ...


def _schemas() -> SchemaSwitching:
    return cast(SchemaSwitching, connections[DEFAULT_DB_ALIAS])


@contextmanager
def _in_schema(schema_name: str) -> Iterator[None]:
    conn = _schemas()
    try:
        # A tenant's django_migrations must be its own, never public's found through search_path.
        conn.set_schema(schema_name, include_public=schema_name == "public")
        yield
    finally:
        conn.set_schema_to_public()


def _plan(
    app_labels: Sequence[str] | None,
) -> tuple[MigrationExecutor, list[tuple[Migration, bool]], list[tuple[str, str]]]:
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    targets = [key for key in executor.loader.graph.leaf_nodes() if app_labels is None or key[0] in app_labels]
    return executor, executor.migration_plan(targets), targets


def all_recorded(schema_name: str, app_labels: Sequence[str]) -> bool:
    """Every migration on disk of ``app_labels`` is recorded in ``schema_name``'s ``django_migrations``: one
    query and the names of the migration modules, where :func:`unapplied` loads the whole migration graph
    (tens of milliseconds at every run's start). False says nothing: ask :func:`unapplied` (a squashed
    migration is recorded as those it replaces)."""
    on_disk: set[tuple[str, str]] = set()
    for app_label in app_labels:
        module_name, _explicit = MigrationLoader.migrations_module(app_label)
        if module_name is None:
            return False
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return False
        on_disk |= {
            (app_label, name)
            for _finder, name, is_package in pkgutil.iter_modules(getattr(module, "__path__", []))
            if not is_package and name[0] not in "_~"
        }
    table = sql.Identifier(schema_name, "django_migrations")
    if not db.fetchvalue("SELECT to_regclass(%s) IS NOT NULL", [db.render(table)]):
        return False
    recorded = {
        (str(app), str(name))
        for app, name in db.fetchall(
            sql.SQL("SELECT app, name FROM {} WHERE app = ANY(%s)").format(table), [list(app_labels)]
        )
    }
    return on_disk <= recorded


def unapplied(schema_name: str, app_labels: Sequence[str] | None = None) -> list[str]:
    """Migrations not yet recorded in ``schema_name``."""
    with _in_schema(schema_name):
        return [f"{m.app_label}.{m.name}" for m, _ in _plan(app_labels)[1]]


def migrate_schema(schema_name: str, app_labels: Sequence[str] | None = None) -> list[str]:
    """Apply pending migrations in ``schema_name`` (``public`` or a tenant); returns what was applied.

    The router (django-tenants) decides per app whether its tables belong in this schema; every
    migration is recorded in the schema's own ``django_migrations`` either way, as migrate_schemas does.
    """
    conn = connections[DEFAULT_DB_ALIAS]
    public = schema_name == "public"
    with _in_schema(schema_name):
        MigrationRecorder(conn).ensure_schema()
        if not public:
            _schemas().set_schema(schema_name)  # tenant tables reference service tables by qualified name
        _executor, plan, _targets = _plan(app_labels)
        if not plan:
            return []
        _apply_in_runs(conn, plan)
        if public and (app_labels is None or "contenttypes" in app_labels):
            # Content types and permissions (the admin's view permissions) are created here; not by
            # the engine's tracking-only bootstrap, before the content types table exists.
            emit_post_migrate_signal(0, False, DEFAULT_DB_ALIAS, plan=plan)
        return [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]


def _apply_in_runs(conn: BaseDatabaseWrapper, plan: list[tuple[Migration, bool]]) -> None:
    """Apply ``plan`` (forwards, in order) in the connection's schema.

    A migration of an app the router keeps out of this schema (a shared app in a tenant schema, a
    tenant app in public) changes nothing in it but its ``django_migrations``: those are recorded in
    one statement per run of them, and the executor runs only the others, each run on the state of
    what is recorded before it, as a plain ``migrate`` would. One executor over the whole plan renders
    every model again after each ``AlterField`` of the shared apps (most of a second per schema).
    """
    recorder = MigrationRecorder(conn)
    runs = groupby(plan, key=lambda step: bool(router.allow_migrate(conn.alias, step[0].app_label)))
    for runs_here, steps in runs:
        migrations = [migration for migration, _backwards in steps]
        if runs_here:
            executor = MigrationExecutor(conn)  # reads what is recorded so far
            executor.migrate([], plan=[(migration, False) for migration in migrations])
        else:
            # as the executor records them: a squashed migration as the migrations it replaces
            names = [key for m in migrations for key in (m.replaces or [(m.app_label, m.name)])]
            recorder.migration_qs.bulk_create(recorder.Migration(app=app, name=name) for app, name in names)


def legacy_registry_present() -> bool:
    """A ``public.tenants`` that the registry's migration did not create: a legacy one, to adopt."""
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass('public.tenants') IS NOT NULL, to_regclass('public.django_migrations') IS NOT NULL"
        )
        registry, recorder = cursor.fetchone() or (False, False)
        if not registry:
            return False
        if not recorder:
            return True
        # A separate statement: one naming public.django_migrations fails to parse while it is missing.
        cursor.execute("SELECT NOT EXISTS (SELECT FROM public.django_migrations WHERE app = 'tenants')")
        row = cursor.fetchone()
        return bool(row and row[0])


def bootstrap_apps() -> tuple[str, ...]:
    """The apps the engine migrates in public before anything is recorded: TRACKING_APPS, but the
    registry's when a legacy ``public.tenants`` is in its way (phase 1's bootstrap step adopts it)."""
    if legacy_registry_present():
        return tuple(app for app in TRACKING_APPS if app != "tenants")
    return TRACKING_APPS


def pending_sql(schema_name: str, app_labels: Sequence[str] | None = None) -> list[str]:
    """The SQL the pending migrations of ``schema_name`` would run (for ``--plan``; applies nothing)."""
    with _in_schema(schema_name):
        if schema_name != "public":
            _schemas().set_schema(schema_name)
        executor, plan, _targets = _plan(app_labels)
        # From the state of what this schema has applied, not the loader's ``collect_sql``, which starts
        # from the first pending migration's ancestors alone: a schema with some migrations applied then
        # lacks the models they made (a ValueError where the plan should show the rest).
        state = ProjectState(real_apps=executor.loader.unmigrated_apps)
        applied = set(executor.loader.applied_migrations)
        for migration, _backwards in executor.migration_plan(executor.loader.graph.leaf_nodes(), clean_start=True):
            if (migration.app_label, migration.name) in applied:
                state = migration.mutate_state(state, preserve=False)
        statements: list[str] = []
        conn = connections[DEFAULT_DB_ALIAS]
        for migration, _backwards in plan:
            with conn.schema_editor(collect_sql=True, atomic=migration.atomic) as editor:
                state = migration.apply(state, editor, collect_sql=True)
            statements += editor.collected_sql
        return [statement for statement in statements if not statement.startswith("--")]


def pending_sql_of_schemas(schemas: Sequence[str]) -> dict[str, list[str]]:
    """:func:`pending_sql` of each of ``schemas`` that exists. One with no ``django_migrations`` yet (every
    tenant before phase 2) has every migration pending, the same SQL in each: rendered once, not per
    tenant (rendering loads the migration graph and replays its states: a third of a second each)."""
    rows = db.fetchall(
        "SELECT s, to_regclass(format('%%I.django_migrations', s)) IS NOT NULL FROM unnest(%s::text[]) s "
        "WHERE to_regnamespace(quote_ident(s)) IS NOT NULL",
        [list(schemas)],
    )
    fresh: list[str] | None = None
    pending: dict[str, list[str]] = {}
    for schema, recorded in rows:
        if recorded:
            pending[schema] = pending_sql(schema)
        else:
            fresh = pending_sql(schema) if fresh is None else fresh
            pending[schema] = fresh
    return pending


# Phase 2's fast way to a tenant's tables: one schema built by the tenant migrations, its DDL read back
# from the catalog and replayed into each tenant schema, instead of loading Django's migration graph
# and running its schema editor once per tenant (~0.5 s each).
TEMPLATE_SCHEMA = "migrator_tenant_template"  # not tenant_*: phase 1 must never take it for a tenant


@dataclass(frozen=True)
class TenantTemplate:
    """What the tenant migrations build in a schema, as SQL that builds it again in another one.

    ``ddl`` names no schema: it runs with ``search_path`` set to the target schema (objects of other
    schemas, like the service tables a foreign key points at, are qualified by the catalog itself).
    """

    ddl: str
    tables: frozenset[str]
    migrations: tuple[tuple[str, str], ...]  # (app, name) of the template's django_migrations, in order

    def replay_sql(self, schema: str) -> str:
        """The template's tables and its django_migrations rows in ``schema`` (inside the caller's transaction)."""
        return db.render(sql.SQL("SET LOCAL search_path TO {};\n").format(sql.Identifier(schema))) + self.ddl


# Objects the replay does not rebuild. A template holding any of them (a RunSQL migration's function,
# trigger, view, sequence, type, policy...) is not cloned: every tenant then runs the migrations itself.
_UNCLONABLE = """
SELECT 'relation ' || c.relname FROM pg_class c
 WHERE c.relnamespace = %(nsp)s::regnamespace
   AND (c.relkind NOT IN ('r', 'i', 'S') OR c.relpersistence <> 'p' OR c.relrowsecurity OR c.reloptions IS NOT NULL
        OR (c.relkind = 'S' AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'i')))
UNION ALL SELECT 'function ' || p.proname FROM pg_proc p WHERE p.pronamespace = %(nsp)s::regnamespace
UNION ALL SELECT 'type ' || t.typname FROM pg_type t WHERE t.typnamespace = %(nsp)s::regnamespace AND t.typrelid = 0
   AND NOT EXISTS (SELECT FROM pg_type e WHERE e.oid = t.typelem AND e.typrelid <> 0)
UNION ALL SELECT 'trigger ' || g.tgname FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
 WHERE c.relnamespace = %(nsp)s::regnamespace AND NOT g.tgisinternal
UNION ALL SELECT 'policy ' || y.polname FROM pg_policy y JOIN pg_class c ON c.oid = y.polrelid
 WHERE c.relnamespace = %(nsp)s::regnamespace
UNION ALL SELECT 'inheritance ' || c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE c.relnamespace = %(nsp)s::regnamespace
"""

_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation THEN quote_ident(n.nspname) || '.' || quote_ident(co.collname) END,
       s.relname, q.seqstart, q.seqincrement, q.seqmin, q.seqmax, q.seqcache, q.seqcycle,
       obj_description(c.oid, 'pg_class'), col_description(c.oid, a.attnum)
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
  LEFT JOIN pg_collation co ON co.oid = a.attcollation
  LEFT JOIN pg_namespace n ON n.oid = co.collnamespace
  LEFT JOIN pg_depend dep ON dep.refobjid = c.oid AND dep.refobjsubid = a.attnum AND dep.deptype = 'i'
       AND dep.classid = 'pg_class'::regclass
  LEFT JOIN pg_class s ON s.oid = dep.objid AND s.relkind = 'S'
  LEFT JOIN pg_sequence q ON q.seqrelid = s.oid
 WHERE c.relnamespace = %(nsp)s::regnamespace AND c.relkind = 'r'
 ORDER BY c.oid, a.attnum
"""

# Primary keys, unique and check constraints before foreign keys (which need the keys they reference).
_CONSTRAINTS = """
SELECT c.relname, k.conname, pg_get_constraintdef(k.oid, true), obj_description(k.oid, 'pg_constraint')
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
 WHERE k.connamespace = %(nsp)s::regnamespace AND k.contype IN ('p', 'u', 'c', 'x', 'f')
 ORDER BY k.contype = 'f', k.oid
"""

_INDEXES = """
SELECT pg_get_indexdef(i.indexrelid, 0, true), x.relname, obj_description(i.indexrelid, 'pg_class')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid
 WHERE c.relnamespace = %(nsp)s::regnamespace
   AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                   AND k.contype IN ('p', 'u', 'x'))
 ORDER BY i.indexrelid
"""


def _comment(kind: str, target: sql.Composable, text: str | None) -> list[sql.Composable]:
    if text is None:
        return []
    return [sql.SQL("COMMENT ON {} {} IS {}").format(sql.SQL(kind), target, sql.Literal(text))]


def _template_ddl(schema: str) -> tuple[str, frozenset[str]]:
    """The DDL of ``schema``'s tables read from the catalog, with no schema name in it (search_path is ``schema``)."""
    params = {"nsp": schema}
    statements: list[sql.Composable] = []
    columns: dict[str, list[sql.Composable]] = {}
    comments: list[sql.Composable] = []
    for row in db.fetchall(_COLUMNS, params):
        table, column, data_type, not_null, default, identity, generated, collation, seq, *seq_options = row[:15]
        table_comment, column_comment = row[15], row[16]
        if table not in columns:
            columns[table] = []
            comments += _comment("TABLE", sql.Identifier(table), table_comment)
        parts = [sql.Identifier(column), sql.SQL(data_type)]
        if collation:
            parts.append(sql.SQL("COLLATE ") + sql.SQL(collation))
        if generated == "s":
            parts.append(sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(default)))
        elif default is not None:
            parts.append(sql.SQL("DEFAULT ") + sql.SQL(default))
        if not_null:
            parts.append(sql.SQL("NOT NULL"))
        if identity:
            start, increment, minimum, maximum, cache, cycle = seq_options
            parts.append(
                sql.SQL(
                    "GENERATED {} AS IDENTITY (SEQUENCE NAME {} START WITH {} INCREMENT BY {} MINVALUE {} "
                    "MAXVALUE {} CACHE {} {})"
                ).format(
                    sql.SQL("ALWAYS" if identity == "a" else "BY DEFAULT"),
                    sql.Identifier(seq),
                    *(sql.Literal(int(v)) for v in (start, increment, minimum, maximum, cache)),
                    sql.SQL("CYCLE" if cycle else "NO CYCLE"),
                )
            )
        columns[table].append(sql.SQL(" ").join(parts))
        comments += _comment("COLUMN", sql.Identifier(table, column), column_comment)
    for table, definitions in columns.items():
        statements.append(
            sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(", ").join(definitions))
        )
    for table, name, definition, comment in db.fetchall(_CONSTRAINTS, params):
        statements.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(table), sql.Identifier(name), sql.SQL(definition)
            )
        )
        comments += _comment(
            "CONSTRAINT", sql.SQL("{} ON {}").format(sql.Identifier(name), sql.Identifier(table)), comment
        )
    for definition, name, comment in db.fetchall(_INDEXES, params):
        statements.append(sql.SQL(definition))
        comments += _comment("INDEX", sql.Identifier(name), comment)
    text = "".join(db.render(statement) + ";\n" for statement in statements + comments)
    return text, frozenset(columns)


def build_tenant_template() -> TenantTemplate | None:
    """Build :data:`TEMPLATE_SCHEMA` with the tenant migrations, read it back as a :class:`TenantTemplate`,
    drop it again. None when it holds something the replay would not rebuild (see ``_UNCLONABLE``)."""
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(TEMPLATE_SCHEMA))
    db.execute(drop)  # a killed run's leftover
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(TEMPLATE_SCHEMA)))
    try:
        migrate_schema(TEMPLATE_SCHEMA)
        with _in_schema(TEMPLATE_SCHEMA):  # the catalog then qualifies only what lies outside the template
            if db.fetchall(_UNCLONABLE, {"nsp": TEMPLATE_SCHEMA}):
                return None
            ddl, tables = _template_ddl(TEMPLATE_SCHEMA)
            migrations = tuple(
                (app, name) for app, name in db.fetchall("SELECT app, name FROM django_migrations ORDER BY id")
            )
    finally:
        db.execute(drop)
    rows = sql.SQL(", ").join(
        sql.SQL("({}, {}, now())").format(sql.Literal(app), sql.Literal(name)) for app, name in migrations
    )
    # Literals: this text runs as one multi-statement query, which takes no parameters.
    ddl += db.render(sql.SQL("INSERT INTO django_migrations (app, name, applied) VALUES {};\n").format(rows))
    return TenantTemplate(ddl=ddl, tables=tables, migrations=migrations)
