"""Thin helpers to run ``psycopg.sql`` compositions on Django's connection.

Queries are rendered with the live psycopg connection (so quoting matches the server) and run
through Django's cursor, which keeps Django's transaction handling and django-tenants' search_path.
Callers compose every identifier with ``sql.Identifier``; values travel as parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import psycopg
from django.db import ProgrammingError, connection, transaction
from psycopg import sql

Query = sql.Composable | str
Params = Sequence[Any] | dict[str, Any] | None


def render(query: Query) -> str:
    """Exact SQL text of ``query``, for ``--plan`` output and logs."""
    if isinstance(query, str):
        return query
    connection.ensure_connection()
    return query.as_string(connection.connection)


def execute(query: Query, params: Params = None) -> int:
    """Run one statement; returns the affected row count."""
    with connection.cursor() as cur:
        cur.execute(render(query), params)
        return cur.rowcount


def fetchall(query: Query, params: Params = None) -> list[tuple[Any, ...]]:
    with connection.cursor() as cur:
        cur.execute(render(query), params)
        return cur.fetchall()


def fetchall_unless_undefined(query: Query, params: Params = None) -> list[tuple[Any, ...]] | None:
    """The rows of a query on tables that may not exist (yet, or any more): None when one does not.

    Outside a transaction the query runs as it is and a missing table is its error, one round trip in
    all; inside one, where that error would end the caller's transaction, it runs in a savepoint. A miss
    is an ERROR in the server's log: for a table that may be there or not at any moment (another session
    drops it), not as the usual way of asking whether it is.
    """
    try:
        if connection.get_autocommit() and not connection.in_atomic_block:
            return fetchall(query, params)
        with transaction.atomic():
            return fetchall(query, params)
    except ProgrammingError as exc:
        if isinstance(exc.__cause__, psycopg.errors.UndefinedTable):
            return None
        raise


def fetchone(query: Query, params: Params = None) -> tuple[Any, ...] | None:
    with connection.cursor() as cur:
        cur.execute(render(query), params)
        return cur.fetchone()


def fetchvalue(query: Query, params: Params = None) -> Any:
    row = fetchone(query, params)
    return None if row is None else row[0]


@contextmanager
def local_settings(**settings: str) -> Iterator[None]:
    """``SET LOCAL`` inside the block, previous values back after it (callers are inside ``transaction.atomic``)."""
    previous = {name: fetchvalue("SELECT current_setting(%s)", [name]) for name in settings}
    for name, value in settings.items():
        execute("SELECT set_config(%s, %s, true)", [name, value])
    yield
    # Not in a ``finally``: after an error the transaction is aborted, any statement would fail with
    # "current transaction is aborted" and hide the first error, and its rollback undoes SET LOCAL anyway.
    for name, value in previous.items():
        execute("SELECT set_config(%s, %s, true)", [name, value])


@contextmanager
def snapshot() -> Iterator[None]:
    """One ``REPEATABLE READ`` transaction: every statement inside reads the same snapshot.

    Must be the outermost transaction (PostgreSQL refuses ``SET TRANSACTION`` after a query or in a
    savepoint). Outside a transaction block it would only warn and leave each statement its own
    snapshot, so the level is checked, not assumed.
    """
    with transaction.atomic():
        execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        level = fetchvalue("SELECT current_setting('transaction_isolation')")
        if level != "repeatable read":
            raise RuntimeError(f"a snapshot was asked for, but the transaction runs at {level}")
        yield


def ident_list(names: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


MAX_APP_NAME = 63  # PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes


def connect_like_django(
    application_name: str, *, dbname: str | None = None, autocommit: bool = True
) -> psycopg.Connection[Any]:
    """A connection of its own to the server Django uses: its database, or ``dbname`` on that server.

    For what must not share Django's connection: the migrator lock's session, load-test clients,
    CREATE/DROP DATABASE (which take no transaction).
    """
    conf = connection.settings_dict
    return psycopg.connect(
        dbname=dbname or conf["NAME"],
        user=conf["USER"] or None,
        password=conf["PASSWORD"] or None,
        host=conf["HOST"] or None,
        port=conf["PORT"] or None,
        autocommit=autocommit,
        application_name=application_name[:MAX_APP_NAME],
    )


def database_url(name: str | None = None) -> str:
    """``DATABASE_URL`` of database ``name`` (default: Django's) on the server Django uses (TCP or a socket folder)."""
    conf = connection.settings_dict
    user = quote(conf["USER"] or "postgres", safe="")
    password = f":{quote(conf['PASSWORD'], safe='')}" if conf["PASSWORD"] else ""
    host = conf["HOST"] or ""
    port = f":{conf['PORT']}" if conf["PORT"] else ""
    dbname = quote(name or conf["NAME"], safe="")
    if host.startswith("/"):
        return f"postgresql://{user}{password}@{port}/{dbname}?host={quote(host, safe='')}"
    return f"postgresql://{user}{password}@{host}{port}/{dbname}"
