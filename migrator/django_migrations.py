"""Django migrations for one schema, the way django-tenants' ``migrate_schemas`` applies them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, cast

from django.core.management.sql import emit_post_migrate_signal
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.migration import Migration
from django.db.migrations.recorder import MigrationRecorder

# Apps the engine needs in public before it can record anything: the registry and the tracking table.
TRACKING_APPS: tuple[str, ...] = ("tenants", "migrator")
# What else lives in public (the admin's users, permissions, sessions): phase 1's bootstrap step.
BOOTSTRAP_APPS: tuple[str, ...] = ("contenttypes", "auth", "admin", "sessions", *TRACKING_APPS)


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
        executor, plan, targets = _plan(app_labels)
        if not plan:
            return []
        executor.migrate(targets, plan=plan)
        if public and (app_labels is None or "contenttypes" in app_labels):
            # Content types and permissions (the admin's view permissions) are created here; not by
            # the engine's tracking-only bootstrap, before the content types table exists.
            emit_post_migrate_signal(0, False, DEFAULT_DB_ALIAS, plan=plan)
        return [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]


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
        return [statement for statement in executor.loader.collect_sql(plan) if not statement.startswith("--")]
