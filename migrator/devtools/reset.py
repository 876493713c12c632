"""Start over: remove every legacy and migrated schema and the migrator's state in this database.

For demos, tests and benchmarks (``seed_legacy --replace``), never part of a migration.
"""

from __future__ import annotations

from django.db import DatabaseError, transaction
from django.db.models import Model
from psycopg import sql

from migrator import catalog, db
from migrator.config import MigratorConfig
from migrator.core.errors import MigrationError
from migrator.models import DeferredConstraint, MigrationRecord, ReferenceMapping
from migrator.ops.capture import CAPTURE_SCHEMA
from migrator.ops.twoway import SYNC_SCHEMA
from migrator.tables import service_tables
from tenants.models import Domain, Tenant


def drop_roles_and_everything_they_own(roles: list[str]) -> list[str]:
    """Development resets only: ``DROP OWNED`` removes whatever the roles own, whoever created them.

    Roles are the server's, not the database's: a role that still holds something in another
    database (another migration on the same server with the same prefix) cannot be dropped from here.
    """
    dropped = []
    for role in roles:
        if not catalog.role_exists(role):
            continue
        try:
            with transaction.atomic():
                db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        except DatabaseError as exc:
            detail = getattr(getattr(exc.__cause__, "diag", None), "message_detail", None) or ""
            raise MigrationError(
                f"role {role} cannot be dropped: {' '.join(detail.split()) or 'other objects depend on it'}; "
                "another database on this server uses the same role prefix: set SALESFLOW_ROLE_PREFIX "
                "to a prefix of this database's own"
            ) from None
        dropped.append(role)
    return dropped


def what_a_reset_drops(config: MigratorConfig) -> str:
    """What :func:`reset_database` would take from this database that someone may want to keep, in words
    ("" when nothing: an empty database, or one only Django's migrations ran on)."""
    found = []
    tenant_schemas = catalog.schemas_like_tenants()
    if tenant_schemas:
        found.append(f"{len(tenant_schemas)} tenant schemas ({tenant_schemas[0]}, ...)")
    for schema in (config.legacy_auth_schema, config.archive_schema):
        if catalog.schema_exists(schema):
            found.append(f"schema {schema}")
    if catalog.tracking_table_exists() and (steps := MigrationRecord.objects.count()):
        found.append(f"the history of a migration ({steps} steps recorded)")
    if not found:
        return ""
    return f"database {db.fetchvalue('SELECT current_database()')}: " + ", ".join(found)


def reset_database(config: MigratorConfig) -> list[str]:
    """Drop tenant, legacy auth and archive schemas; empty service tables; forget all migrator state."""
    done: list[str] = []
    # One schema per transaction: dropping a thousand tenant schemas at once exhausts the lock table.
    # The online mode's capture and two-way sync schemas too (the sync's triggers go with its functions):
    # bookkeeping kept across a reseed would describe legacy tables that no longer exist.
    for schema in [
        SYNC_SCHEMA,  # first: its event triggers refuse dropping a table in two-way sync
        *catalog.schemas_like_tenants(),
        config.legacy_auth_schema,
        config.archive_schema,
        CAPTURE_SCHEMA,
    ]:
        if catalog.schema_exists(schema):
            with transaction.atomic():
                db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            done.append(f"dropped schema {schema}")
    with transaction.atomic():
        existing = [
            sql.Identifier(schema, table)
            for schema, tables in service_tables().items()
            for table in tables
            if catalog.table_exists(schema, table)
        ]
        if existing:
            db.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(sql.SQL(", ").join(existing)))
            done.append(f"emptied {len(existing)} service tables")
        models: tuple[type[Model], ...] = (Domain, Tenant, MigrationRecord, ReferenceMapping, DeferredConstraint)
        for model in models:
            if not catalog.table_exists("public", model._meta.db_table):
                continue  # a database the migrator has never run on
            deleted, _ = model._default_manager.all().delete()
            if deleted:
                done.append(f"deleted {deleted} {model._meta.db_table} rows")
        # Every role of the configured prefix, whoever made it: a reset is for development and test
        # databases (tests make such roles beforehand on purpose), never for a migration.
        done += [
            f"dropped role {role}" for role in drop_roles_and_everything_they_own(list(config.service_roles.values()))
        ]
    return done
