"""One migrator per database: a session-level PostgreSQL advisory lock on a connection of its own.

The lock lives on its own connection so that closing or resetting Django's connections (Django
migrations do) never releases it, and it vanishes with the process if the process is killed.
The holder's phase, host and pid ride in ``application_name`` so a refused runner can say who
holds it and since when.
"""

from __future__ import annotations

import os
import socket
from types import TracebackType

import psycopg

from migrator.core.errors import LockHeld, LockLost
from migrator.db import MAX_APP_NAME, connect_like_django
from tenants import schema_lock

# Two int4 keys: (namespace, lock) -> pg_locks.classid / objid.
LOCK_NAMESPACE = 0x53460000  # "SF"
LOCK_ID = 1
APP_NAME_PREFIX = schema_lock.MIGRATOR_APP_NAME


def holder_name(phase: str) -> str:
    """``application_name`` of the lock's connection, within PostgreSQL's 63 bytes.

    Host and pid must survive the limit, so a long phase list (``all``: ``prepare+...+cutover``) is
    shortened to its first and last phase, and cut further only if that is still too long.
    """
    tail = f" on {socket.gethostname()} pid {os.getpid()}"
    room = MAX_APP_NAME - len(APP_NAME_PREFIX) - 1 - len(tail)
    if len(phase) > room and "+" in phase:
        phases = phase.split("+")
        phase = f"{phases[0]}..{phases[-1]}"
    if len(phase) > room:
        phase = phase[: max(room - 2, 0)] + ".."
    return f"{APP_NAME_PREFIX} {phase}{tail}"[:MAX_APP_NAME]


def describe_holder(conn: psycopg.Connection) -> str:
    row = conn.execute(
        "SELECT a.application_name, a.backend_start, a.pid FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [LOCK_NAMESPACE, LOCK_ID],
    ).fetchone()
    if row is None:
        return "another migrate_phase (it has just finished; try again)"
    app_name, since, backend_pid = row
    who = app_name[len(APP_NAME_PREFIX) :].strip() if app_name.startswith(APP_NAME_PREFIX) else app_name
    return f"migrate_phase {who} (server pid {backend_pid}) since {since:%Y-%m-%d %H:%M:%S %Z}"


class MigratorLock:
    """``with MigratorLock("data"):`` holds the lock or raises :class:`LockHeld` at once.

    ``schemas=True`` (a run of phases that change schemas) holds the schema-change lock of
    tenants/schema_lock.py too, on the same connection, so that deploys wait; refused at once while a
    deploy holds it."""

    def __init__(self, phase: str, schemas: bool = False) -> None:
        self.phase = phase
        self.schemas = schemas
        self._conn: psycopg.Connection | None = None
        self._holds_schemas = False

    def __enter__(self) -> MigratorLock:
        self._conn = self._acquire("another migration is running on this database: {holder}; wait for it to finish")
        return self

    def _acquire(self, refusal: str) -> psycopg.Connection:
        conn = connect_like_django(holder_name(self.phase))
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_NAMESPACE, LOCK_ID]).fetchone()
        if not (row and row[0]):
            holder = describe_holder(conn)
            conn.close()
            raise LockHeld(refusal.format(holder=holder))
        if self.schemas and not schema_lock.held_by_this_process():
            if not schema_lock.try_lock(conn):
                deploy = schema_lock.describe_holder(conn)
                conn.close()
                raise LockHeld(
                    f"a deploy is changing the schemas: {deploy}; nothing was changed: run the phase again "
                    "when it has finished"
                )
            schema_lock.note_taken()
            self._holds_schemas = True
        return conn

    def release(self) -> None:
        """Let the lock go and close its session (``rollback --restore`` renames the database, which
        no session may be connected to); :meth:`reacquire` takes it again."""
        self.__exit__(None, None, None)

    def reacquire(self) -> None:
        """Take the lock again on the database that now carries the name; refused if another run took
        it in between (it was free while the databases were renamed)."""
        if self._conn is not None:
            return
        try:
            self._conn = self._acquire(
                "another migration took the lock while the restore swapped the databases: {holder}; "
                "wait for it to finish, then rerun `migrate_phase rollback --restore`"
            )
        except LockHeld as exc:
            raise LockLost(str(exc)) from None

    def check(self) -> None:
        """Raise :class:`LockLost` unless this run still holds the lock.

        A session lock vanishes with its connection, and an idle connection can be ended behind our
        back (``pg_terminate_backend``, ``idle_session_timeout``, a proxy's timeout); another run is
        then admitted. Writers call this before each batch so that a run that lost the lock stops.
        """
        if self._conn is None:
            raise LockLost("this run does not hold the migrator lock; rerun the phase")
        try:
            row = self._conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                "AND granted AND classid = %s AND objid = %s AND objsubid = 2)",
                [LOCK_NAMESPACE, LOCK_ID],
            ).fetchone()
            held = bool(row and row[0])
            reason = "" if held else "the lock is no longer held by its connection"
        except psycopg.Error as exc:
            held, reason = (
                False,
                f"its connection to the server ended: {' '.join(str(exc).split()) or type(exc).__name__}",
            )
        if not held:
            raise LockLost(
                f"this run lost the migrator lock ({reason}), so another run may have started; it stopped "
                "before its next batch, every committed batch is kept: check that no other migrate_phase "
                "is running, then rerun the phase to resume"
            )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._holds_schemas:
            self._holds_schemas = False
            schema_lock.note_released()  # closing the connection below lets the server's lock go
        if self._conn is not None:
            try:
                if not self._conn.closed:
                    self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, LOCK_ID])
            except psycopg.Error:
                pass  # a lost lock (see check) has nothing left to release
            finally:
                self._conn.close()
                self._conn = None
