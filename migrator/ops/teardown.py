"""Undoing what the migration created (rollback without --restore): its tables, schemas and roles.

Legacy tables are never touched here.
"""

from __future__ import annotations

from django.db import transaction
from psycopg import sql

from migrator import catalog, db
from migrator.config import MigratorConfig
from migrator.tables import TENANT_DATA_TABLES, service_tables


MIGRATED_APPS = ("accounts", "contact", "activity", "contact_data", "activity_data")


def drop_tenant_tables(schema: str) -> list[str]:
    """Drop the namespaced tables (and the schema's django_migrations) a migration made in a legacy schema."""
    dropped = []
    with transaction.atomic():
        for table in [*reversed([t.table for t in TENANT_DATA_TABLES]), "django_migrations"]:
            if catalog.table_exists(schema, table):
                db.execute(sql.SQL("DROP TABLE {} CASCADE").format(sql.Identifier(schema, table)))
                dropped.append(table)
        db.execute("DELETE FROM public.migrator_deferred_constraints WHERE schema_name = %s", [schema])
    return dropped


def drop_service_schemas() -> list[str]:
    dropped = []
    with transaction.atomic():
        for schema in service_tables():
            if catalog.schema_exists(schema):
                db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                dropped.append(schema)
        db.execute("DELETE FROM public.django_migrations WHERE app = ANY(%s)", [list(MIGRATED_APPS)])
        db.execute("DELETE FROM public.migrator_reference_map")
    return dropped



def drop_service_roles(config: MigratorConfig) -> list[str]:
    dropped = []
    for role in config.service_roles.values():
        if catalog.role_exists(role):
            db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
            dropped.append(role)
    return dropped
