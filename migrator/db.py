"""Thin helpers to run ``psycopg.sql`` compositions on Django's connection.

Queries are rendered with the live psycopg connection (so quoting matches the server) and run
through Django's cursor, which keeps Django's transaction handling and django-tenants' search_path.
Callers compose every identifier with ``sql.Identifier``; values travel as parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import connection
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


def ident_list(names: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)
