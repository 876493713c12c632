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


def archive_tables(schema: str, owner: str, tables: list[str], archive_schema: str, drop: bool) -> dict[str, str]:
    """Move (or drop) ``schema``'s legacy ``tables`` in one transaction; returns table -> where it went."""
    moved: dict[str, str] = {}
    present = catalog.tables_by_schema([schema])[schema]
    # Within a caller's transaction (cutover's: locked, checked, moved) no savepoint of its own: an
    # error here rolls that whole transaction back anyway.
    with transaction.atomic(savepoint=False):
        if drop:
            for table in tables:
                if table in present:
                    # Never CASCADE: whatever still depends on a legacy table (a view, a foreign key, a
                    # child table) must stop the drop, not silently go with it.
                    db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, table)))
                    moved[table] = "dropped"
            return moved
        # Every rename and move in one round trip (one per table and statement costs more than the DDL).
        to_move = [table for table in tables if table in present]
        statements = _dependent_renames(schema, to_move, owner)
        for table in to_move:
            new_name = archive_table_name(owner, table)
            statements.append(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, table), sql.Identifier(new_name))
            )
            statements.append(
                sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                    sql.Identifier(schema, new_name), sql.Identifier(archive_schema)
                )
            )
            moved[table] = f"{archive_schema}.{new_name}"
        if statements:
            db.execute(sql.SQL("; ").join(statements))
    return moved


def lock_tables(schema: str, tables: list[str]) -> list[str]:
    """Lock ``schema``'s ``tables`` that exist against every other session until the transaction ends.

    ACCESS EXCLUSIVE (not just SHARE ROW EXCLUSIVE, which blocks writes): the tables are renamed in
    the same transaction, and taking the strongest lock first avoids upgrading it later, which
    could deadlock with a reader that queued meanwhile. Returns the tables locked.
    """
    existing = catalog.tables_by_schema([schema])[schema]
    present = [t for t in tables if t in existing]
    if present:
        db.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(schema, t) for t in present)
            )
        )
    return present


def _rename_dependents(schema: str, table: str, owner: str) -> None:
    """Indexes and owned sequences move with a table and share the schema's namespace: prefix them too,
    so that every tenant's ``contacts_pkey`` can live in the one archive schema."""
    statements = _dependent_renames(schema, [table], owner)
    if statements:
        db.execute(sql.SQL("; ").join(statements))


def _dependent_renames(schema: str, tables: list[str], owner: str) -> list[sql.Composed]:
    """The renames of :func:`_rename_dependents` for every table of ``tables``, from one catalog query."""
    rows = db.fetchall(
        "WITH t AS (SELECT to_regclass(format('%%I.%%I', %s::text, name)) AS oid FROM unnest(%s::text[]) name) "
        "SELECT c.relkind, c.relname FROM t JOIN pg_index x ON x.indrelid = t.oid "
        "JOIN pg_class c ON c.oid = x.indexrelid "
        "UNION ALL "
        "SELECT c.relkind, c.relname FROM t JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass "
        "AND d.refobjid = t.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
        "JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'",
        [schema, tables],
    )
    return [
        sql.SQL("ALTER INDEX {} RENAME TO {}" if kind == "i" else "ALTER SEQUENCE {} RENAME TO {}").format(
            sql.Identifier(schema, name), sql.Identifier(archive_table_name(owner, name))
        )
        for kind, name in rows
    ]


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
    """Move archived ``tables`` of ``owner`` back into ``schema`` under their names (the reverse of archive_tables)."""
    moved = []
    for table in tables:
        archived = archive_table_name(owner, table)
        if not catalog.table_exists(archive_schema, archived):
            continue
        db.execute(
            sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                sql.Identifier(archive_schema, archived), sql.Identifier(schema)
            )
        )
        db.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, archived), sql.Identifier(table))
        )
        rows = db.fetchall(
            "SELECT c.relkind, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('i', 'S') AND starts_with(c.relname, %s)",
            [schema, archive_table_name(owner, "")],
        )
        for kind, name in rows:
            original = name[len(archive_table_name(owner, "")) :]
            statement = "ALTER INDEX {} RENAME TO {}" if kind == "i" else "ALTER SEQUENCE {} RENAME TO {}"
            db.execute(sql.SQL(statement).format(sql.Identifier(schema, name), sql.Identifier(original)))
        moved.append(table)
    return moved
