"""Whole databases on the server: looked up, made like another one, dropped.

A restore and a rehearsal each make a database that stands in for the current one (the restored copy that
replaces it, the scratch copy a rehearsal migrates). Both are made like the current database: its
encoding, collation and character classes decide how text sorts and compares (so which rows a unique
index refuses and in which order keyset batches walk a text key), and its tablespace is where the
operator keeps that database's files.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors, sql

from migrator.core.errors import MigrationError


def database_oid(admin: psycopg.Connection[Any], name: str) -> int | None:
    row = admin.execute("SELECT oid FROM pg_database WHERE datname = %s", [name]).fetchone()
    return None if row is None else int(row[0])


def database_comment(admin: psycopg.Connection[Any], name: str) -> str | None:
    """The database's comment ('' when it has none), or None when there is no such database."""
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [name]
    ).fetchone()
    return None if row is None else (row[0] or "")


def drop_database(admin: psycopg.Connection[Any], name: str) -> None:
    # FORCE ends the sessions a killed run's children (pg_restore, a scratch run) may still hold.
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_database_like(admin: psycopg.Connection[Any], name: str, like: int, *, same_owner: bool) -> None:
    """An empty database ``name`` with the encoding, locale and tablespace of database ``like`` (an oid), and
    its owner when ``same_owner`` (otherwise the session's user owns it)."""
    row = admin.execute(
        "SELECT to_jsonb(d), pg_encoding_to_char(d.encoding), pg_get_userbyid(d.datdba), t.spcname "
        "FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.oid = %s",
        [like],
    ).fetchone()
    assert row is not None
    current, encoding, owner, tablespace = row
    options = [
        sql.SQL("TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Literal(encoding), sql.Literal(current["datcollate"]), sql.Literal(current["datctype"])
        )
    ]
    provider = {"i": "icu", "b": "builtin"}.get(current.get("datlocprovider") or "c")
    if provider is not None:  # PostgreSQL 15 names the ICU locale daticulocale, 17 datlocale
        locale = current.get("datlocale") or current.get("daticulocale")
        keyword = "ICU_LOCALE" if provider == "icu" else "BUILTIN_LOCALE"
        options.append(
            sql.SQL("LOCALE_PROVIDER {} {} {}").format(sql.SQL(provider), sql.SQL(keyword), sql.Literal(locale))
        )
    if same_owner:
        options.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
    options.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(tablespace)))
    try:
        admin.execute(sql.SQL("CREATE DATABASE {} {}").format(sql.Identifier(name), sql.SQL(" ").join(options)))
    except errors.InsufficientPrivilege as exc:
        raise MigrationError(
            f"cannot create database {name} like the current one ({' '.join(str(exc).split())}); "
            f"grant CREATEDB and CREATE on tablespace {tablespace} to the migrator's user, then rerun"
        ) from None
