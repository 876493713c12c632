"""What a failed step leaves behind: the line its error is recorded as, and the connection it used."""

from __future__ import annotations

import logging

import psycopg
from django.db import DatabaseError, connection

logger = logging.getLogger("migrator.runner")


def database_error_line(exc: BaseException) -> str:
    """The server's message on one line, with its DETAIL (the key or row at fault) when it has one."""
    cause = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    diag = getattr(cause, "diag", None)
    message = getattr(diag, "message_primary", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    detail = getattr(diag, "message_detail", None)
    return " ".join(f"{message} ({detail})".split()) if detail else message


def recover_connection(atomic_depth: int) -> None:
    """Leave the connection as the step found it, whatever the step left behind.

    Django's schema editor leaves its transaction open when deferred SQL fails, and a killed
    backend leaves a dead connection; either would make recording the failure fail too.
    """
    try:
        while len(connection.atomic_blocks) > atomic_depth:
            leaked = connection.atomic_blocks[-1]
            leaked.__exit__(RuntimeError, RuntimeError("step failed"), None)  # rolls back and pops
    except (DatabaseError, psycopg.Error):
        # The step's own error is the one to report; a connection that cannot even roll back is dropped.
        logger.info("cleaning up after a failed step failed", exc_info=True)
        del connection.atomic_blocks[atomic_depth:]
        if not connection.atomic_blocks:  # nothing of the caller's is open: a fresh connection next time
            connection.in_atomic_block = False
            connection.needs_rollback = False
        connection.close()
        return
    if connection.connection is not None and not connection.in_atomic_block and not connection.is_usable():
        connection.close()
