"""A django-tenants migration executor for deploys: only the schemas that are behind, in parallel.

django-tenants' standard executor runs Django's ``migrate`` in every schema, loading the migration
graph and reading the schema's ``django_migrations`` each time: ~0.1-0.8 s per tenant even when
nothing is to be applied. This one loads the graph once, finds the schemas that lack a migration of it
with one query per few hundred schemas, and runs ``migrate`` (django-tenants' ``run_migrations``, so
its signals and output are the usual ones) only there, in forked worker processes. A schema that fails
does not stop the others; the command exits non-zero at the end, naming each failed schema.

A registry row whose ``schema_name`` is not a tenant schema (a service schema, ``public``, ``pg_*``, the
legacy auth or archive schema, anything but ``tenant_<valid id>``) is refused by name and never
migrated, whatever constraints the registry table still has: ``migrate`` would create tenant tables
in it. The run's failures and refusals are announced (``tenants.signals.tenant_schemas_migrated``),
so that ``migrate_phase status`` can show them and its deploy gate can refuse.

Selected by ``TENANT_MIGRATION_EXECUTOR = "behind-only"`` in the settings (``--executor`` or the
``EXECUTOR`` variable still choose another one). One named schema (``--schema``, a tenant being
created) and the options that need ``migrate`` in every schema (a target migration, ``--fake``,
``--fake-initial``, ``--prune``, ``--plan``, ``--check``, ``--run-syncdb``) run the standard way.

Deploys and the migrator: every run (the public schema's, the tenants', one named schema's) holds the
schema-change lock (tenants/schema_lock.py) from before it looks at ``django_migrations`` until its
last worker has ended. The parent holds it on a connection of its own; the forked workers do not take
it. A ``migrate_phase`` phase that changes schemas holds the same lock for its whole run, so a deploy
started meanwhile waits for it (``SALESFLOW_DEPLOY_LOCK_TIMEOUT`` seconds, default 60, saying so in one
line) or is refused in one line naming the phase; a second deploy waits for the first and then finds
nothing left to apply, so no migration is applied or recorded twice. A tenant schema dropped under a
running deploy (by hand: the migrator's rollback cannot run meanwhile) fails that tenant by name
("the schema does not exist"); the other schemas are migrated.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError
from django.db import DatabaseError, connections
from django.db.migrations.loader import MigrationLoader
from django_tenants.migration_executors import get_executor as executor_by_codename
from django_tenants.migration_executors.base import MigrationExecutor, run_migrations
from psycopg import sql

from salesflow.layout import is_reserved_schema, tenant_id_from_schema
from tenants import schema_lock
from tenants.signals import tenant_schemas_migrated

# Schemas per catalog query: one UNION ALL branch each, far below any statement size limit.
SCHEMAS_PER_QUERY = 500
# Options under which the standard executor's per-schema ``migrate`` is what the operator asked for.
EVERY_SCHEMA_OPTIONS = (
    "app_label",
    "migration_name",
    "fake",
    "fake_initial",
    "prune",
    "plan",
    "check_unapplied",
    "run_syncdb",
)


def get_executor(codename: str | None = None) -> type[MigrationExecutor]:
    """``GET_EXECUTOR_FUNCTION``: ``--executor``, else ``EXECUTOR``, else the ``TENANT_MIGRATION_EXECUTOR`` setting."""
    chosen = codename or os.environ.get("EXECUTOR") or getattr(settings, "TENANT_MIGRATION_EXECUTOR", None)
    return executor_by_codename(chosen)


def expected_migrations() -> list[tuple[str, str]]:
    """Every migration of the project: ``migrate`` records each in every schema it runs in, whichever
    apps' tables the router puts there."""
    return sorted(MigrationLoader(None, ignore_no_migrations=True).graph.nodes)


def schemas_behind(schemas: list[str], expected: list[tuple[str, str]], alias: str = "default") -> list[str]:
    """The schemas of ``schemas`` whose ``django_migrations`` lacks one of ``expected`` (or which have none)."""
    connection: Any = connections[alias]  # django-tenants' wrapper, which ships no type information
    connection.set_schema_to_public()
    behind: set[str] = set()
    apps = [app for app, _name in expected]
    names = [name for _app, name in expected]
    with connection.cursor() as cursor:
        for start in range(0, len(schemas), SCHEMAS_PER_QUERY):
            chunk = schemas[start : start + SCHEMAS_PER_QUERY]
            # A statement naming a missing table fails to parse: find the schemas without one first.
            cursor.execute(
                "SELECT s, to_regclass(format('%%I.django_migrations', s)) IS NOT NULL FROM unnest(%s::text[]) s",
                [chunk],
            )
            recorded = []
            for schema, has_table in cursor.fetchall():
                if has_table:
                    recorded.append(schema)
                else:
                    behind.add(schema)
            if not recorded:
                continue
            behind.update(_lacking_a_migration(connection, cursor, recorded, apps, names))
    return [schema for schema in schemas if schema in behind]


def refused_schemas(schemas: list[str]) -> dict[str, str]:
    """The schemas of ``schemas`` that are no tenant schema, with the one-line reason each is refused."""
    conf = settings.SALESFLOW
    refused = {}
    for schema in schemas:
        if is_reserved_schema(schema, conf["LEGACY_AUTH_SCHEMA"], conf["ARCHIVE_SCHEMA"]):
            what = "a reserved schema (public, pg_*, a service, the legacy auth or archive schema)"
        elif tenant_id_from_schema(schema) is None:
            what = "not tenant_<id> with a valid tenant id"
        else:
            continue
        refused[schema] = (
            f"refused: the tenant registry (public.tenants) names schema {schema!r}, which is {what}; "
            "not migrated: correct or delete that registry row"
        )
    return refused


def refused_missing(schemas: list[str], alias: str) -> dict[str, str]:
    """The schemas of ``schemas`` that do not exist, with the one-line reason each is refused (Django's own
    error, "no schema has been selected to create in", names none)."""
    return {
        schema: (
            f"refused: the tenant registry (public.tenants) names schema {schema!r}, which does not exist (dropped "
            "since the tenant was registered); not migrated: restore the schema, or delete that registry row"
        )
        for schema in sorted(missing_schemas(schemas, alias))
    }


def _lacking_a_migration(
    connection: Any, cursor: Any, schemas: list[str], apps: list[str], names: list[str]
) -> list[str]:
    """The schemas of ``schemas`` (each with a ``django_migrations``) that lack one of the migrations.

    A schema dropped since its table was found makes the one query fail: then each schema is asked on
    its own, and one whose table is gone counts as behind (its ``migrate`` then fails by its name).
    """
    try:
        return _lacking_query(connection, cursor, schemas, apps, names)
    except DatabaseError:
        if len(schemas) == 1:
            return schemas
    found = []
    for schema in schemas:
        try:
            found += _lacking_query(connection, cursor, [schema], apps, names)
        except DatabaseError:
            found.append(schema)
    return found


def _lacking_query(connection: Any, cursor: Any, schemas: list[str], apps: list[str], names: list[str]) -> list[str]:
    branches = sql.SQL(" UNION ALL ").join(
        sql.SQL(
            "(SELECT %s::text FROM expected e WHERE NOT EXISTS "
            "(SELECT FROM {} m WHERE m.app = e.app AND m.name = e.name) LIMIT 1)"
        ).format(sql.Identifier(schema, "django_migrations"))
        for schema in schemas
    )
    query = sql.SQL(
        "WITH expected(app, name) AS MATERIALIZED (SELECT * FROM unnest(%s::text[], %s::text[])) {}"
    ).format(branches)
    connection.ensure_connection()
    cursor.execute(query.as_string(connection.connection), [apps, names, *schemas])
    return [row[0] for row in cursor.fetchall()]


def missing_schemas(schemas: list[str], alias: str = "default") -> set[str]:
    """The schemas of ``schemas`` that do not exist (dropped while the deploy ran)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT s FROM unnest(%s::text[]) s WHERE NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = s)",
            [schemas],
        )
        return {row[0] for row in cursor.fetchall()}


def _migrate_one(
    args: tuple[Any, ...], options: dict[str, Any], codename: str, count: int, forked: bool, job: tuple[int, str]
) -> str | None:
    """``migrate`` in one schema; the error line when it failed, else None. In this process (not ``forked``)
    it may run inside the caller's transaction, as the standard executor allows."""
    index, schema = job
    try:
        run_migrations(args, options, codename, schema, allow_atomic=not forked, idx=index, count=count)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - one schema's failure must not stop the others
        message = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"[{codename}:{schema}] FAILED: {message}\n")
        return f"{schema}: {message}"
    return None


class BehindOnlyExecutor(MigrationExecutor):
    codename = "behind-only"

    def run_migrations(self, tenants: Iterable[str] | None = None) -> None:
        schemas = list(tenants or [])
        if not schemas:
            return
        what = "migrate_schemas" + (f" --schema {schemas[0]}" if len(schemas) == 1 else "")
        try:
            with schema_lock.deploy_lock(what, self._say, self.TENANT_DB_ALIAS):
                self._run_migrations(schemas)
        except schema_lock.SchemaLockBusy as exc:
            raise CommandError(str(exc)) from None

    def _say(self, line: str) -> None:
        if int(self.options.get("verbosity", 1)) >= 1:
            sys.stdout.write(f"[{self.codename}] {line}\n")
            sys.stdout.flush()

    def _run_migrations(self, schemas: list[str]) -> None:
        if self.PUBLIC_SCHEMA_NAME in schemas:
            try:
                run_migrations(self.args, self.options, self.codename, self.PUBLIC_SCHEMA_NAME)
            except DatabaseError as exc:  # e.g. refused by the online migration's guard: one line, not a traceback
                cause = getattr(getattr(exc.__cause__, "diag", None), "message_primary", None)
                raise CommandError(
                    f"the shared schemas' migrations failed, nothing of the failing migration was applied: "
                    f"{cause or ' '.join(str(exc).split())}; tenant schemas were not migrated"
                ) from None
            schemas.remove(self.PUBLIC_SCHEMA_NAME)
        refused = refused_schemas(schemas) | refused_missing(schemas, self.TENANT_DB_ALIAS)
        for schema, reason in refused.items():
            sys.stderr.write(f"[{self.codename}:{schema}] {reason}\n")
        schemas = [schema for schema in schemas if schema not in refused]
        if not schemas:
            self._finish(0, 0, [], refused)
            return
        # One schema named (``--schema``, or django-tenants creating a tenant, maybe inside a transaction):
        # the standard way, in this process. A run over the registry goes the recorded way below even when
        # the registry holds one tenant: its failure is the deploy gate's to see, in one line.
        if self.options.get("schema_name") or any(self.options.get(option) for option in EVERY_SCHEMA_OPTIONS):
            for index, schema in enumerate(schemas):
                run_migrations(self.args, self.options, self.codename, schema, idx=index, count=len(schemas))
            self._finish(len(schemas), len(schemas), [], refused, announce=False)
            return
        behind = schemas_behind(schemas, expected_migrations(), self.TENANT_DB_ALIAS)
        self._say(f"{len(behind)} of {len(schemas)} tenant schemas have migrations to apply")
        failures = self._migrate(behind) if behind else []
        self._finish(len(schemas), len(behind), failures, refused)

    def _finish(
        self, schemas: int, behind: int, failures: list[str], refused: dict[str, str], announce: bool = True
    ) -> None:
        """Announce the run's outcome (``announce``: a run over the registry's tenant schemas), then fail if
        a schema failed or a registry row was refused."""
        if announce:
            failed = dict(failure.split(": ", 1) for failure in failures) | refused
            connection: Any = connections[self.TENANT_DB_ALIAS]  # django-tenants' wrapper
            connection.set_schema_to_public()
            tenant_schemas_migrated.send(sender=type(self), schemas=schemas + len(refused), failed=failed)
        if failures:
            raise CommandError(
                f"{len(failures)} of {behind} tenant schemas failed to migrate ({'; '.join(failures)}); "
                "the others are migrated: fix the cause and run migrate_schemas again"
            )
        if refused:
            raise CommandError(
                f"{len(refused)} registry rows refused ({', '.join(refused)}): not tenant schemas, or schemas that "
                "no longer exist (each said why above), not migrated; the tenant schemas are migrated: restore "
                "those schemas, or correct or delete those rows in public.tenants"
            )

    def run_multi_type_migrations(self, tenants: Iterable[tuple[str, str]]) -> None:
        raise NotImplementedError(
            "the behind-only executor does not support multi-type tenants; use --executor standard"
        )

    def _migrate(self, schemas: list[str]) -> list[str]:
        processes = int(self.options.get("parallel") or getattr(settings, "TENANT_MULTIPROCESSING_MAX_PROCESSES", 2))
        if processes <= 1 or len(schemas) == 1:
            here = functools.partial(_migrate_one, self.args, self.options, self.codename, len(schemas), False)
            return self._named_failures(schemas, list(map(here, enumerate(schemas))))
        migrate = functools.partial(_migrate_one, self.args, self.options, self.codename, len(schemas), True)
        connection = connections[self.TENANT_DB_ALIAS]
        connection.close()  # forked workers must not share the parent's connection
        connection.connection = None
        # fork: the workers inherit the loaded apps and settings, as django-tenants' multiprocessing executor's do.
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        pool = context.Pool(processes=min(processes, len(schemas)))
        try:
            results = pool.map(migrate, enumerate(schemas), chunksize=1)
        finally:
            pool.close()
            pool.join()
        return self._named_failures(schemas, results)

    def _named_failures(self, schemas: list[str], results: list[str | None]) -> list[str]:
        """Each failed schema's error line; "the schema does not exist" for one dropped while the deploy ran."""
        failed = [schema for schema, error in zip(schemas, results, strict=True) if error]
        try:
            gone = missing_schemas(failed, self.TENANT_DB_ALIAS) if failed else set()
        except DatabaseError:
            gone = set()  # the server's own errors are still there to show
        return [
            f"{schema}: the schema does not exist (dropped while the deploy ran)" if schema in gone else str(error)
            for schema, error in zip(schemas, results, strict=True)
            if error
        ]
