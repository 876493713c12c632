"""The schema-change lock: deploys and the migrator's DDL phases never change the schemas at once.

One PostgreSQL session-level advisory lock per database, in a key namespace of its own (the migrator
lock is ``(0x53460000, 1)``, see migrator/engine/lock.py). It is taken EXCLUSIVE, for the whole run, by

- a deploy: ``migrate_schemas`` through the project's executor (tenants/migration_executor.py), both its
  behind-only path and the standard path it takes for one named schema;
- ``migrate_phase`` runs of the phases that change schemas (prepare, schemas, security, cutover,
  rollback, finalize): on the migrator lock's own connection, so that a restore which lets that
  connection go lets both go, and takes both again.

``data`` (phase 3) runs for hours and changes no table, only the indexes and constraints it drops and
rebuilds around each copy, which a deploy's migration may also manage: it takes the lock in SHARED
mode (:func:`shared_lock`) for each tenant (reading the target's columns, the copies, the rebuilds) and
around each of its phase-wide steps. A deploy waits for the tenants being copied to finish, then runs
while the phase waits; the next tenant is copied into the schema as the deploy left it.

``verify``, ``sync`` and ``rehearse`` do not take it: they change rows, not the catalog, and ``sync
--follow`` runs for days in the online window, when deploys must keep working. A deploy's ``ALTER``
and their writes serialize on the tables' own locks.

A deploy that finds the lock held waits for it at most ``TENANT_DEPLOY_LOCK_TIMEOUT`` seconds
(``SALESFLOW_DEPLOY_LOCK_TIMEOUT``, default 60; 0: no wait) and is refused with one line naming the
holder; two deploys at once therefore run one after the other, and the second finds nothing left to
apply. A phase that finds a deploy holding it is refused at once, like a second ``migrate_phase``.

The lock lives on a connection of its own (Django migrations close and reset Django's), held by the
deploy's parent process while it forks its workers; it vanishes with the process if the process is
killed. A process that holds it (a phase that migrates tenant schemas itself, a tenant created while a
phase runs) does not wait for it again.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, connections

# Two int4 keys: (namespace, lock) -> pg_locks.classid / objid (objsubid 2).
SCHEMA_LOCK_NAMESPACE = 0x53464444  # "SFDD": schema DDL
SCHEMA_LOCK_ID = 1
DEPLOY_APP_NAME = "salesflow-deploy"
MIGRATOR_APP_NAME = "salesflow-migrator"
SHARED_APP_NAME = "salesflow-migrator-shared"  # a phase's connection that holds the lock in shared mode
MAX_APP_NAME = 63  # PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes
DEFAULT_TIMEOUT = 60.0

_held_by_this_process = 0


class SchemaLockBusy(Exception):
    """The schema-change lock stayed held by another session; the message is one line naming it."""


def held_by_this_process() -> bool:
    return _held_by_this_process > 0


def note_taken() -> None:
    global _held_by_this_process
    _held_by_this_process += 1


def note_released() -> None:
    global _held_by_this_process
    _held_by_this_process = max(_held_by_this_process - 1, 0)


def deploy_timeout() -> float:
    return float(getattr(settings, "TENANT_DEPLOY_LOCK_TIMEOUT", DEFAULT_TIMEOUT))


def try_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", [SCHEMA_LOCK_NAMESPACE, SCHEMA_LOCK_ID]).fetchone()
    return bool(row and row[0])


def unlock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", [SCHEMA_LOCK_NAMESPACE, SCHEMA_LOCK_ID])


def describe_holder(conn: psycopg.Connection[Any]) -> str:
    """Who holds the lock, in words: the phase or deploy with its host and pid, the server pid and since when."""
    row = conn.execute(
        "SELECT a.application_name, a.backend_start, a.pid FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [SCHEMA_LOCK_NAMESPACE, SCHEMA_LOCK_ID],
    ).fetchone()
    if row is None:
        return "another session (it has just let the lock go)"
    app_name, since, backend_pid = row
    if app_name.startswith(SHARED_APP_NAME):
        who = f"migrate_phase {app_name[len(SHARED_APP_NAME) :].strip()}"
    elif app_name.startswith(MIGRATOR_APP_NAME):
        who = f"migrate_phase {app_name[len(MIGRATOR_APP_NAME) :].strip()}"
    elif app_name.startswith(DEPLOY_APP_NAME):
        who = app_name[len(DEPLOY_APP_NAME) :].strip()
    else:
        who = app_name or "a session without application_name"
    return f"{who} (server pid {backend_pid}) since {since:%Y-%m-%d %H:%M:%S %Z}"


def deploy_holder_name(what: str) -> str:
    """``application_name`` of a deploy's lock connection; host and pid survive PostgreSQL's 63 bytes."""
    tail = f" on {socket.gethostname()} pid {os.getpid()}"
    room = MAX_APP_NAME - len(DEPLOY_APP_NAME) - 1 - len(tail)
    if len(what) > room:
        what = what[: max(room - 2, 0)] + ".."
    return f"{DEPLOY_APP_NAME} {what}{tail}"[:MAX_APP_NAME]


def connect(application_name: str, alias: str = "default") -> psycopg.Connection[Any]:
    """A connection of its own to the database of Django's ``alias`` (server or embedded: its settings)."""
    conf = connections[alias].settings_dict
    return psycopg.connect(
        dbname=conf["NAME"],
        user=conf["USER"] or None,
        password=conf["PASSWORD"] or None,
        host=conf["HOST"] or None,
        port=conf["PORT"] or None,
        autocommit=True,
        application_name=application_name[:MAX_APP_NAME],
    )


@contextmanager
def deploy_lock(what: str, on_wait: Callable[[str], None], alias: str = "default") -> Iterator[None]:
    """Hold the lock for the block, waiting for its holder at most :func:`deploy_timeout` seconds.

    ``on_wait`` gets one line when the lock is busy and the deploy waits; :class:`SchemaLockBusy` is
    raised, before anything is changed, if it is still busy after the wait.
    """
    if held_by_this_process():
        yield
        return
    timeout = deploy_timeout()
    conn = connect(deploy_holder_name(what), alias)
    try:
        if not try_lock(conn):
            holder = describe_holder(conn)
            if timeout <= 0:
                raise SchemaLockBusy(_refusal(holder, timeout))
            on_wait(f"waiting up to {timeout:g} s for {holder}, which is changing the schemas")
            # lock_timeout bounds the wait for an advisory lock too (0 would mean no bound).
            conn.execute("SELECT set_config('lock_timeout', %s, false)", [f"{max(int(timeout * 1000), 1)}ms"])
            try:
                conn.execute("SELECT pg_advisory_lock(%s, %s)", [SCHEMA_LOCK_NAMESPACE, SCHEMA_LOCK_ID])
            except psycopg.errors.LockNotAvailable:
                raise SchemaLockBusy(_refusal(describe_holder(conn), timeout)) from None
        note_taken()
        try:
            yield
        finally:
            note_released()
            with contextlib.suppress(psycopg.Error):  # a connection that ended took the lock with it
                unlock(conn)
    finally:
        conn.close()


@contextmanager
def shared_lock(what: str) -> Iterator[None]:
    """Hold the lock in shared mode on Django's connection for the block (waiting while a deploy holds it).

    Shared holders do not wait for each other; a deploy (exclusive) waits until every shared holder
    let it go, and shared requests made meanwhile queue behind it. The connection is named after
    ``what`` (the phase), with host and pid, so that a waiting deploy says who it waits for. Nothing:
    this process holds the lock exclusively already (``migrate_phase schemas+data``).
    """
    if held_by_this_process():
        yield
        return
    name = f"{SHARED_APP_NAME} {what} on {socket.gethostname()} pid {os.getpid()}"[:MAX_APP_NAME]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('application_name', %s, false), pg_advisory_lock_shared(%s, %s)",
            [name, SCHEMA_LOCK_NAMESPACE, SCHEMA_LOCK_ID],
        )
    try:
        yield
    finally:
        with contextlib.suppress(DatabaseError), connection.cursor() as cursor:  # a lost connection took it along
            cursor.execute("SELECT pg_advisory_unlock_shared(%s, %s)", [SCHEMA_LOCK_NAMESPACE, SCHEMA_LOCK_ID])


def _refusal(holder: str, timeout: float) -> str:
    return (
        f"migrate_schemas refused: {holder} is changing the schemas (waited {timeout:g} s); nothing was "
        "applied: run the deploy again when it has finished, or wait longer with SALESFLOW_DEPLOY_LOCK_TIMEOUT"
    )
