"""Drop a table's secondary indexes and foreign keys for a bulk load, and rebuild them after it.

Definitions are saved in ``public.migrator_deferred_constraints`` in the same transaction that
drops them, so a load killed halfway can always rebuild what it dropped.
"""

from __future__ import annotations

from django.db import transaction
from psycopg import sql

from migrator import db
from migrator.models import DeferredConstraint

# Render definitions fully qualified, whatever the connection's search_path.
QUALIFY_ALL = {"search_path": "pg_catalog"}


def defer_constraints(schema: str, table: str) -> int:
    """Drop non-constraint indexes and foreign keys of ``schema.table``, remembering them. Idempotent."""
    with transaction.atomic():
        with db.local_settings(**QUALIFY_ALL):
            indexes = db.fetchall(
                "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
                "JOIN pg_namespace n ON n.oid = t.relnamespace "
                "WHERE n.nspname = %s AND t.relname = %s AND NOT x.indisprimary "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
                [schema, table],
            )
            foreign_keys = db.fetchall(
                "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
                "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                "WHERE n.nspname = %s AND t.relname = %s AND c.contype = 'f'",
                [schema, table],
            )
        rows = [DeferredConstraint(schema_name=schema, table_name=table, name=name, kind=DeferredConstraint.Kind.INDEX,
                                   definition=definition) for name, definition in indexes]
        rows += [DeferredConstraint(schema_name=schema, table_name=table, name=name,
                                    kind=DeferredConstraint.Kind.FOREIGN_KEY, definition=definition)
                 for name, definition in foreign_keys]
        DeferredConstraint.objects.bulk_create(rows)
        for name, _definition in foreign_keys:
            db.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(schema, table), sql.Identifier(name)))
        for name, _definition in indexes:
            db.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
    return len(rows)


def restore_constraints(schema: str, table: str, maintenance_work_mem: str = "256MB") -> int:
    """Rebuild what :func:`defer_constraints` dropped: indexes, then foreign keys NOT VALID + VALIDATE."""
    deferred = list(DeferredConstraint.objects.filter(schema_name=schema, table_name=table))
    with transaction.atomic():
        with db.local_settings(maintenance_work_mem=maintenance_work_mem, **QUALIFY_ALL):
            for item in deferred:
                if item.kind == DeferredConstraint.Kind.INDEX:
                    # The definition is PostgreSQL's own pg_get_indexdef output, not outside input.
                    db.execute(sql.SQL(item.definition))
            for item in deferred:
                if item.kind == DeferredConstraint.Kind.FOREIGN_KEY:
                    db.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                        sql.Identifier(schema, table), sql.Identifier(item.name), sql.SQL(item.definition)))
                    db.execute(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                        sql.Identifier(schema, table), sql.Identifier(item.name)))
        DeferredConstraint.objects.filter(pk__in=[item.pk for item in deferred]).delete()
    return len(deferred)


def unvalidated_foreign_keys(schema: str, table: str) -> list[str]:
    rows = db.fetchall(
        "SELECT c.conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = %s AND t.relname = %s AND c.contype = 'f' AND NOT c.convalidated",
        [schema, table],
    )
    return [row[0] for row in rows]


def pending_deferred(schema: str, table: str) -> list[str]:
    return list(DeferredConstraint.objects.filter(schema_name=schema, table_name=table).values_list("name", flat=True))
