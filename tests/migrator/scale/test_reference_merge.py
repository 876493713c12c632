"""The reference merge reads every tenant's legacy reference table; at ten thousand tenants one
transaction over all of them ran out of the server's lock table ("out of shared memory"). Tenants
are staged a batch per transaction, so a tenant's table is no longer locked once its batch committed."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import DatabaseError, connection
from psycopg import sql

from migrator.core.errors import MigrationError
from migrator.ops import reference
from migrator.tables import REFERENCE_TABLES
from tests.migrator.helpers import psycopg_connect, wait_for

REF = REFERENCE_TABLES[0]


def test_a_tenant_staged_in_an_earlier_batch_is_not_locked_while_later_ones_are_read(
    schemas_ready: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reference, "TENANTS_PER_STAGING_TRANSACTION", 1)
    first, second = sorted(schemas_ready["tenants"])[:2]
    second_table = sql.Identifier(f"tenant_{second}", REF.legacy_table)
    outcome: dict[str, Any] = {}

    def merge() -> None:
        try:
            outcome["pid"] = connection.cursor().connection.info.backend_pid
            outcome["result"] = reference.merge_reference_table(REF, [first, second], "refuse")
        except (DatabaseError, MigrationError) as exc:  # reported to the test below
            outcome["error"] = exc
        finally:
            connection.close()

    with psycopg_connect() as blocker, psycopg_connect() as watcher:
        blocker.execute("BEGIN")
        blocker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(second_table))
        worker = threading.Thread(target=merge)
        worker.start()
        try:
            wait_for(
                lambda: (
                    "pid" in outcome
                    and watcher.execute(
                        "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", [outcome["pid"]]
                    ).fetchone()[0]
                ),
                timeout=30,
                what="the merge to wait for the second tenant's table",
            )
            held = watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE pid = %s AND relation = to_regclass(%s) AND granted",
                [outcome["pid"], f"tenant_{first}.{REF.legacy_table}"],
            ).fetchone()[0]
        finally:
            blocker.execute("ROLLBACK")
            worker.join(timeout=30)
    assert "error" not in outcome, outcome.get("error")
    assert held == 0  # the first tenant's batch committed before the second was read
    assert outcome["result"].tenants_merged == [first, second]
    assert outcome["result"].mapped == outcome["result"].rows_staged > 0
