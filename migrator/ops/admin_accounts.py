"""The admin site's accounts carried across a restore, as the tracking history is.

The phase-1 backup is taken before anyone has an account on the admin site (the tables are made by
phase 1's bootstrap): restored as it is, it would lock every operator out of the site that shows them
the rollback, and forget who changed what (the admin's log) and who is locked out after failed logins.
The rows of these tables are read from the current database and replace the backup's in the new one,
in the same transaction as the history. Permissions and content types go with them: their ids are
what the accounts' rows point at, and the content types of phase 2's apps are not in the backup.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.apps import apps
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.contrib.sessions.models import Session
from django.db import models
from psycopg import sql

from migrator import db


def account_models() -> list[type[models.Model]]:
    """Referenced tables before the tables that reference them."""
    carried: list[type[models.Model]] = [
        ContentType,
        Permission,
        Group,
        Group.permissions.through,
        User,
        User.groups.through,
        User.user_permissions.through,
        LogEntry,
        Session,
    ]
    if apps.is_installed("axes"):  # failed logins and the locks they led to
        carried += list(apps.get_app_config("axes").get_models())
    return carried


def read_accounts() -> dict[str, str]:
    """Each table's rows, as JSON, from the current database (the tables it has)."""
    rows: dict[str, str] = {}
    for model in account_models():
        table = model._meta.db_table
        query = sql.SQL("SELECT coalesce(jsonb_agg(t), '[]')::text FROM {} t").format(sql.Identifier("public", table))
        if db.fetchvalue("SELECT to_regclass(%s) IS NOT NULL", [f"public.{table}"]):
            rows[table] = str(db.fetchvalue(query))
    return rows


def write_accounts_into(conn: psycopg.Connection[Any], rows: dict[str, str]) -> int:
    """Replace the tables' rows in the database of ``conn`` (inside the caller's transaction); the rows
    written. A table the new database lacks is left out."""
    present = [
        table
        for table in rows
        if conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"public.{table}"]).fetchone() == (True,)
    ]
    for table in reversed(present):
        conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier("public", table)))
    written = 0
    for table in present:
        target = sql.Identifier("public", table)
        # keys the restored table has no column for are left out (rows written by a newer release)
        cursor = conn.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM jsonb_populate_recordset(NULL::{}, %s::jsonb)").format(
                target, target
            ),
            [rows[table]],
        )
        written += cursor.rowcount
        sequence = conn.execute(
            "SELECT pg_get_serial_sequence(attrelid::regclass::text, 'id') FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attname = 'id'",
            [f"public.{table}"],
        ).fetchone()
        if sequence and sequence[0]:
            conn.execute(
                sql.SQL("SELECT setval(%s, coalesce((SELECT max(id) FROM {}), 0) + 1, false)").format(target),
                [sequence[0]],
            )
    return written
