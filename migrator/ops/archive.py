"""Cutover: legacy tables leave the tenant schemas for the archive schema (or are dropped on request)."""

from __future__ import annotations

import hashlib

from django.db import transaction
from psycopg import sql

from migrator import catalog, db

MAX_IDENTIFIER = 63


def archive_table_name(owner: str, table: str) -> str:
    """``<owner>__<table>``, shortened with a hash when PostgreSQL's 63-byte limit would cut it."""
    name = owner + "__" + table
    if len(name.encode()) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    keep = MAX_IDENTIFIER - len(table) - len(digest) - 3
    return owner[:keep] + "_" + digest + "__" + table


def ensure_archive_schema(archive_schema: str) -> bool:
    if catalog.schema_exists(archive_schema):
        return False
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(archive_schema)))
    return True


def archive_tables(
    schema: str, owner: str, tables: list[str], archive_schema: str, drop: bool, present: set[str] | None = None
) -> dict[str, str]:
    """Move (or drop) ``schema``'s legacy ``tables`` in one transaction; returns table -> where it went.
    ``present``: the schema's tables, when the caller has just read them."""
    moved: dict[str, str] = {}
    if present is None:
        present = catalog.tables_by_schema([schema])[schema]
    # Within a caller's transaction (cutover's: locked, checked, moved) no savepoint of its own: an
    # error here rolls that whole transaction back anyway.
    with transaction.atomic(savepoint=False):
        if drop:
            dropped = [table for table in tables if table in present]
            if dropped:
                # One statement, never CASCADE: the legacy tables may reference each other, but whatever
                # else still depends on one (a view, a foreign key, a child table) must stop the drop,
                # not silently go with it.
                db.execute(
                    sql.SQL("DROP TABLE {}").format(
                        sql.SQL(", ").join(sql.Identifier(schema, table) for table in dropped)
                    )
                )
            moved.update((table, "dropped") for table in dropped)
            return moved
        # Every rename and move in one round trip (one per table and statement costs more than the DDL).
        to_move = [table for table in tables if table in present]
        partitions, statements = _dependents(schema, to_move, owner)
        # A partitioned table's partitions are tables of their own: SET SCHEMA on the parent leaves them
        # (and their indexes) where they are, so each moves too, under a name of its owner like the parent.
        for table in [*partitions, *to_move]:
            new_name = archive_table_name(owner, table)
            statements.append(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, table), sql.Identifier(new_name))
            )
            statements.append(
                sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                    sql.Identifier(schema, new_name), sql.Identifier(archive_schema)
                )
            )
            if table in to_move:
                moved[table] = f"{archive_schema}.{new_name}"
        if statements:
            db.execute(sql.SQL("; ").join(statements))
    return moved


def archived_tables(moved: dict[str, str], schema: str) -> dict[tuple[str, str], sql.Identifier]:
    """(schema, legacy table) -> where :func:`archive_tables` moved it (dropped ones left out)."""
    return {
        (schema, table): sql.Identifier(*where.split(".", 1)) for table, where in moved.items() if where != "dropped"
    }


def lock_tables(schema: str, tables: list[str]) -> list[str]:
    """Lock ``schema``'s ``tables`` that exist against every other session until the transaction ends.

    ACCESS EXCLUSIVE (not just SHARE ROW EXCLUSIVE, which blocks writes): the tables are renamed in
    the same transaction, and taking the strongest lock first avoids upgrading it later, which
    could deadlock with a reader that queued meanwhile. Returns the tables locked.
    """
    existing = catalog.tables_by_schema([schema])[schema]
    present = [t for t in tables if t in existing]
    lock_relations([(schema, t) for t in present])
    return present


def lock_relations(relations: list[tuple[str, str]]) -> None:
    """``relations`` (schema, table), in this order, ACCESS EXCLUSIVE, in one statement (see :func:`lock_tables`)."""
    if relations:
        db.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(*r) for r in relations)
            )
        )


# ``schema``'s tables of a list and their partitions (every level) in the same schema; a partition
# elsewhere stays where it is and stays attached to its parent.
_TABLES_AND_PARTITIONS = (
    "WITH root AS (SELECT to_regclass(format('%%I.%%I', %s::text, name)) AS oid FROM unnest(%s::text[]) name), "
    "t AS (SELECT oid, false AS partition FROM root WHERE oid IS NOT NULL "
    "  UNION ALL SELECT p.relid, true FROM root CROSS JOIN LATERAL pg_partition_tree(root.oid) p "
    "  JOIN pg_class pc ON pc.oid = p.relid WHERE p.level > 0 AND pc.relnamespace = to_regnamespace(quote_ident(%s))) "
)


def _dependents(schema: str, tables: list[str], owner: str) -> tuple[list[str], list[sql.Composed]]:
    """The partitions of ``tables`` in ``schema``, and the renames of the tables' and those partitions'
    dependents, from one catalog query: indexes (partitioned ones included) and owned sequences move
    with a table and share the schema's namespace: each gets its owner's prefix, so that every tenant's
    ``contacts_pkey`` can live in the one archive schema."""
    rows = db.fetchall(
        _TABLES_AND_PARTITIONS
        + "SELECT c.relkind, c.relname FROM t JOIN pg_class c ON c.oid = t.oid WHERE t.partition "
        "UNION ALL "
        "SELECT c.relkind, c.relname FROM t JOIN pg_index x ON x.indrelid = t.oid "
        "JOIN pg_class c ON c.oid = x.indexrelid "
        "UNION ALL "
        "SELECT c.relkind, c.relname FROM t JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass "
        "AND d.refobjid = t.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
        "JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'",
        [schema, tables, schema],
    )
    partitions = [name for kind, name in rows if kind in TABLE_KINDS]
    renames = [
        sql.SQL(_RENAME[kind]).format(sql.Identifier(schema, name), sql.Identifier(archive_table_name(owner, name)))
        for kind, name in rows
        if kind not in TABLE_KINDS
    ]
    return partitions, renames


TABLE_KINDS = ("r", "p")  # ordinary and partitioned tables (a partition is either)
# A table's dependents that share its schema's namespace, by relkind: indexes, partitioned indexes
# (of a partitioned table: ALTER INDEX renames them as well) and sequences.
_RENAME = {
    "i": "ALTER INDEX {} RENAME TO {}",
    "I": "ALTER INDEX {} RENAME TO {}",
    "S": "ALTER SEQUENCE {} RENAME TO {}",
}


def drop_schema_if_empty(schema: str) -> bool:
    if not catalog.schema_exists(schema):
        return False
    # Through pg_depend's index on the referenced object: pg_class has no index on relnamespace alone.
    remaining = db.fetchvalue(
        "SELECT count(*) FROM pg_depend d JOIN pg_class c ON c.oid = d.objid "
        "WHERE d.refclassid = 'pg_namespace'::regclass AND d.classid = 'pg_class'::regclass "
        "AND d.refobjid = to_regnamespace(quote_ident(%s))",
        [schema],
    )
    if remaining:
        return False
    db.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(schema)))
    return True


def unarchive_tables(schema: str, owner: str, tables: list[str], archive_schema: str) -> list[str]:
    """Move archived ``tables`` of ``owner`` back into ``schema`` under their names (the reverse of archive_tables),
    with the partitions that were archived with them."""
    moved = []
    prefix = archive_table_name(owner, "")
    for table in tables:
        archived = archive_table_name(owner, table)
        if not catalog.table_exists(archive_schema, archived):
            continue
        partitions = [
            name
            for (name,) in db.fetchall(
                _TABLES_AND_PARTITIONS + "SELECT c.relname FROM t JOIN pg_class c ON c.oid = t.oid "
                "WHERE t.partition AND starts_with(c.relname, %s)",
                [archive_schema, [archived], archive_schema, prefix],
            )
        ]
        for name, original in [*((p, p[len(prefix) :]) for p in partitions), (archived, table)]:
            db.execute(
                sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                    sql.Identifier(archive_schema, name), sql.Identifier(schema)
                )
            )
            db.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, name), sql.Identifier(original))
            )
        rows = db.fetchall(
            "SELECT c.relkind, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('i', 'I', 'S') AND starts_with(c.relname, %s)",
            [schema, prefix],
        )
        for kind, name in rows:
            original = name[len(prefix) :]
            db.execute(sql.SQL(_RENAME[kind]).format(sql.Identifier(schema, name), sql.Identifier(original)))
        moved.append(table)
    return moved
