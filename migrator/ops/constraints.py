"""Drop a table's secondary indexes and foreign keys for a bulk load, and rebuild them after it.

Definitions are saved in ``public.migrator_deferred_constraints`` in the same transaction that
drops them, so a load killed halfway can always rebuild what it dropped.

The primary key is deferred too when nothing else depends on it (no other table's foreign key
references it, no view relies on it): maintaining it row by row costs far more than building it
once after the load (PostgreSQL 15, 2M activities: 2.5 s loaded with the key, 0.95 s + 0.4 s
build without it). The load does not need it: batch bounds and checkpoints are keys read from the
source's index, and a resumed copy finds its last key in the target with one scan. It is recorded
as the complete ``ALTER TABLE ... ADD CONSTRAINT ... PRIMARY KEY`` statement (built from
``pg_get_constraintdef``) and rebuilt with the indexes, before the foreign keys; a duplicate key
would make that rebuild fail loudly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import DatabaseError, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.core.errors import MigrationError
from migrator.models import DeferredConstraint

# Render definitions fully qualified, whatever the connection's search_path.
QUALIFY_ALL = {"search_path": "pg_catalog"}


def defer_constraints(schema: str, table: str) -> int:
    """Drop non-constraint indexes, foreign keys and (when nothing else needs it) the primary key of
    ``schema.table``, remembering them. Idempotent."""
    with transaction.atomic():
        with db.local_settings(**QUALIFY_ALL):
            indexes = catalog.relation_rows(
                "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid "
                "WHERE x.indrelid = {oid} AND NOT x.indisprimary "
                # Not the index of one of the table's constraints, nor one that a foreign key references
                # (pg_constraint has no index on conindid: keyed by conrelid, then by pg_depend's reference index).
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = x.indrelid "
                "AND c.conindid = x.indexrelid OFFSET 0) "
                "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass "
                "AND d.refobjid = x.indexrelid AND d.refobjsubid = 0 AND d.classid = 'pg_constraint'::regclass "
                "OFFSET 0)",
                schema,
                table,
            )
            foreign_keys = catalog.relation_rows(
                "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
                "WHERE c.conrelid = {oid} AND c.contype = 'f'",
                schema,
                table,
            )
            primary_key = _deferrable_primary_key(schema, table)
        # Each dropped object with the statement (or definition) that brings it back, kind by kind.
        kept: list[tuple[str, str, str]] = [(name, d, DeferredConstraint.Kind.INDEX) for name, d in indexes]
        kept += [(name, d, DeferredConstraint.Kind.FOREIGN_KEY) for name, d in foreign_keys]
        if primary_key:
            name, definition = primary_key
            # pg_get_constraintdef output, completed into the statement that restores it.
            statement = db.render(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    sql.Identifier(schema, table), sql.Identifier(name), sql.SQL(definition)
                )
            )
            kept.insert(0, (name, statement, DeferredConstraint.Kind.INDEX))
        rows = [
            DeferredConstraint(schema_name=schema, table_name=table, name=name, kind=kind, definition=definition)
            for name, definition, kind in kept
        ]
        DeferredConstraint.objects.bulk_create(rows)
        for name, _definition in foreign_keys:
            db.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(schema, table), sql.Identifier(name))
            )
        for name, _definition in indexes:
            db.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
        if primary_key:
            db.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(schema, table), sql.Identifier(primary_key[0])
                )
            )
    return len(rows)


def _deferrable_primary_key(schema: str, table: str) -> tuple[str, str] | None:
    """The plain table's primary key (name, definition) if only the table itself depends on it.

    Dependents that would block the drop: foreign keys of other tables (they depend on the key's
    index; the table's own foreign keys are dropped first) and views that rely on the key.
    ``OFFSET 0`` keeps each NOT EXISTS a subplan probing pg_depend's index for this one key: as an anti
    join it may hash all of pg_depend, every tenant's dependencies, when the catalog statistics are stale.
    """
    row = db.fetchone(
        sql.SQL(
            "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid "
            "WHERE t.oid = {oid} AND t.relkind = 'r' AND c.contype = 'p' "
            "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_constraint'::regclass "
            "    AND d.refobjid = c.oid AND NOT (d.classid = 'pg_class'::regclass AND d.objid = c.conindid) OFFSET 0) "
            "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass "
            "    AND d.refobjid = c.conindid AND NOT (d.classid = 'pg_constraint'::regclass AND d.objid IN "
            "        (SELECT f.oid FROM pg_constraint f WHERE f.conrelid = c.conrelid AND f.contype = 'f')) OFFSET 0)"
        ).format(oid=catalog.RELATION_OID),
        [schema, table],
    )
    return (row[0], row[1]) if row else None


REBUILD_ADVICE = (
    "fix those rows in the legacy table, then roll back and copy the table again (a key the legacy table "
    "does hold was written during the copy: offline, stop the application's writes first, or use --online)"
)


# SQLSTATE class 23: the rows themselves break the index or foreign key (unique, foreign key, check, ...).
INTEGRITY_VIOLATION = "23"
Task = Callable[[], None]
# Runs (size, task) pairs, on several connections at once where the caller has them.
RunTasks = Callable[[list[tuple[int, Task]]], None]
# (rebuilt so far, to rebuild): after each index or foreign key, from whichever connection built it
RebuildProgress = Callable[[int, int], None]


def _counter(total: int, progress: RebuildProgress | None) -> Task:
    """A callable that counts one more rebuilt item and reports it (thread-safe: parallel builds call it)."""
    lock = threading.Lock()
    done = 0

    def one_more() -> None:
        nonlocal done
        with lock:
            done += 1
            if progress is not None:
                progress(done, total)

    return one_more


def restore_constraints(
    schema: str,
    table: str,
    maintenance_work_mem: str = "256MB",
    advice: str = REBUILD_ADVICE,
    kind: DeferredConstraint.Kind | None = None,
    parallel: RunTasks | None = None,
    progress: RebuildProgress | None = None,
) -> int:
    """Rebuild what :func:`defer_constraints` dropped: indexes, then foreign keys NOT VALID + VALIDATE
    (``kind``: only those).

    Copied rows that break a rebuilt constraint (orphans, duplicate keys) fail it with one line that
    names the constraint, the server's message and the key at fault, followed by ``advice``.

    ``parallel`` (a large table copied in ranges by several connections): its secondary indexes are
    built on several connections at once (``CREATE INDEX`` locks the table in a mode that does not
    conflict with itself), each in a transaction of its own that also forgets its deferred record, so a
    kill leaves every index either built or still recorded. The primary key is built first, on its own
    (``ADD PRIMARY KEY`` locks the table exclusively), and the foreign keys last, one transaction as
    before (``VALIDATE`` conflicts with itself).

    ``progress(rebuilt, of)`` after each index and foreign key: on a large table the rebuild takes minutes
    after the last row was copied.
    """
    found = DeferredConstraint.objects.filter(schema_name=schema, table_name=table)
    deferred = list(found if kind is None else found.filter(kind=kind))
    if not deferred:  # a small table copied with its constraints in place: nothing to rebuild
        return 0
    one_more = _counter(len(deferred), progress)
    try:
        if parallel is None:
            _rebuild(schema, table, deferred, maintenance_work_mem, one_more)
        else:
            _rebuild_in_parallel(schema, table, deferred, maintenance_work_mem, parallel, one_more)
    except DatabaseError as exc:
        diag = getattr(exc.__cause__, "diag", None)
        reason = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0]
        detail = getattr(diag, "message_detail", None)
        failing = getattr(diag, "constraint_name", None)
        if not str(getattr(diag, "sqlstate", None) or "").startswith(INTEGRITY_VIOLATION):
            # a connection ended, a statement cancelled, the disk full: nothing said about the rows
            raise MigrationError(
                f"{schema}.{table}: rebuilding its indexes and foreign keys failed: {reason}; nothing is wrong "
                "with the copied rows as far as this says: rerun `migrate_phase data` (the rebuild goes on "
                "with what is left)"
            ) from None
        raise MigrationError(
            " ".join(
                f"{schema}.{table}: the copied rows break {failing or 'a rebuilt index or foreign key'}: {reason}"
                f"{f' ({detail})' if detail else ''}; {advice}".split()
            )
        ) from None
    return len(deferred)


def _rebuild(
    schema: str, table: str, deferred: list[DeferredConstraint], maintenance_work_mem: str, one_more: Task
) -> None:
    with transaction.atomic():
        with db.local_settings(maintenance_work_mem=maintenance_work_mem, **QUALIFY_ALL):
            for item in deferred:
                if item.kind == DeferredConstraint.Kind.INDEX:
                    # PostgreSQL's own pg_get_indexdef output (a deferred primary key: its
                    # pg_get_constraintdef output in an ALTER TABLE statement), not outside input.
                    db.execute(sql.SQL(item.definition))
                    one_more()
            for item in deferred:
                if item.kind == DeferredConstraint.Kind.FOREIGN_KEY:
                    db.execute(
                        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                            sql.Identifier(schema, table), sql.Identifier(item.name), sql.SQL(item.definition)
                        )
                    )
                    db.execute(
                        sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                            sql.Identifier(schema, table), sql.Identifier(item.name)
                        )
                    )
                    one_more()
        DeferredConstraint.objects.filter(pk__in=[item.pk for item in deferred]).delete()


def _build_index(item: DeferredConstraint, maintenance_work_mem: str, one_more: Task) -> None:
    """One deferred index (or primary key) built, and its record gone, in one transaction."""
    with transaction.atomic():
        with db.local_settings(maintenance_work_mem=maintenance_work_mem, **QUALIFY_ALL):
            db.execute(sql.SQL(item.definition))  # PostgreSQL's own definition, as in _rebuild
        DeferredConstraint.objects.filter(pk=item.pk).delete()
    one_more()


def _rebuild_in_parallel(
    schema: str,
    table: str,
    deferred: list[DeferredConstraint],
    maintenance_work_mem: str,
    parallel: RunTasks,
    one_more: Task,
) -> None:
    indexes = [item for item in deferred if item.kind == DeferredConstraint.Kind.INDEX]
    primary = [item for item in indexes if item.definition.startswith("ALTER TABLE")]
    for item in primary:
        _build_index(item, maintenance_work_mem, one_more)
    secondary = [item for item in indexes if item not in primary]

    def build(item: DeferredConstraint) -> Task:
        return lambda: _build_index(item, maintenance_work_mem, one_more)

    parallel([(1, build(item)) for item in secondary])
    foreign_keys = [item for item in deferred if item.kind == DeferredConstraint.Kind.FOREIGN_KEY]
    if foreign_keys:
        _rebuild(schema, table, foreign_keys, maintenance_work_mem, one_more)


def unvalidated_foreign_keys(schema: str, table: str) -> list[str]:
    rows = catalog.relation_rows(
        "SELECT c.conname FROM pg_constraint c WHERE c.conrelid = {oid} AND c.contype = 'f' AND NOT c.convalidated",
        schema,
        table,
    )
    return [row[0] for row in rows]


def tables_with_deferred() -> list[tuple[str, str]]:
    """(schema, table) of every table whose indexes or foreign keys a bulk copy dropped and has not rebuilt
    (a copy that failed or was killed between the two)."""
    return list(
        DeferredConstraint.objects.order_by("schema_name", "table_name")
        .values_list("schema_name", "table_name")
        .distinct()
    )


def pending_deferred(schema: str, table: str) -> list[str]:
    return list(DeferredConstraint.objects.filter(schema_name=schema, table_name=table).values_list("name", flat=True))


def missing_constraints(schema: str, table: str) -> list[str]:
    """:func:`pending_deferred` then :func:`unvalidated_foreign_keys`, in one query."""
    from django_tenants.utils import get_public_schema_name

    rows = db.fetchall(
        sql.SQL(
            "SELECT name FROM (SELECT 1 AS part, name FROM {deferred} WHERE schema_name = %s AND table_name = %s "
            "UNION ALL SELECT 2, c.conname FROM pg_constraint c WHERE c.conrelid = {oid} AND c.contype = 'f' "
            "AND NOT c.convalidated) m ORDER BY part"
        ).format(
            deferred=sql.Identifier(get_public_schema_name(), DeferredConstraint._meta.db_table),
            oid=catalog.RELATION_OID,
        ),
        [schema, table, schema, table],
    )
    return [row[0] for row in rows]
