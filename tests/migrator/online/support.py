"""What the two-way sync tests share: names of the seeded tenant's tables, SQL on them, and the check that
both sides hold the same rows."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors, sql

from tests.helpers import run
from tests.migrator.helpers import content, plain_columns, wrongly_remapped

TENANT = "tenant_acme_0001"
OTHER_TENANT = "tenant_globex_0002"
AUTH = "salesflow_auth"
CONTACTS = "contact_data_contacts"
ACTIVITIES = "activity_data_activities"


def on(schema: str, query: str, *tables: str) -> sql.Composed:
    """``query`` with its ``{}`` placeholders filled by these tables of ``schema``."""
    return sql.SQL(query).format(*(sql.Identifier(schema, table) for table in tables))


def on_tenant(query: str, *tables: str) -> sql.Composed:
    return on(TENANT, query, *tables)


def assert_in_sync(schema: str = TENANT) -> None:
    """Legacy and new tables hold the same rows (reference ids naming the same codes), auth too."""
    for legacy, target in (("contacts", CONTACTS), ("activities", ACTIVITIES)):
        cols = plain_columns(legacy)
        assert content(schema, legacy, cols) == content(schema, target, cols), legacy
        assert wrongly_remapped(schema, legacy) == 0, legacy
    cols = ["id", "email", "password_hash", "full_name", "is_active", "created_at"]
    assert content(AUTH, "users", cols) == content("auth", "users", cols)


def retried(conn: psycopg.Connection, work: Callable[[psycopg.Connection], Any], attempts: int = 50) -> Any:
    """``work`` in a transaction, retried on a deadlock, a serialization failure or the two-way sync's lock
    timeout (writers meeting from opposite sides), as an application does. PostgreSQL reports that timeout
    as a cancel (57014) when it fires as the lock is granted: retried too (docs/online.md)."""
    for attempt in range(attempts):
        try:
            with conn.transaction():
                return work(conn)
        except (errors.DeadlockDetected, errors.SerializationFailure, errors.LockNotAvailable, errors.QueryCanceled):
            # A random pause growing with the attempt: two writers that met on a row from opposite sides
            # and retried at once would meet again.
            time.sleep(random.uniform(0, 0.02) * (attempt + 1))
    raise AssertionError(f"gave up after {attempts} attempts")


def cut_over_online() -> None:
    """From the ``synced`` stage: phases 4-6 (the new tables declared primary)."""
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    run("migrate_phase", "cutover", interactive=False)


def migrate_online_until_cutover() -> None:
    """From the ``schemas_ready`` stage: ``data --online`` and phases 4-5 (the last step before cutover)."""
    run("migrate_phase", "data", "--online", interactive=False)
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
