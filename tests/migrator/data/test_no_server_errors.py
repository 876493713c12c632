"""A data run, offline or online, asks the server nothing that it answers with an error. Each such answer
is an ERROR line in the server's log and a rolled-back transaction in its statistics, which a production
database's monitoring watches; a question asked per tenant (is it migrated online?) would make thousands
of them in one run."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import connection, connections

from tests.helpers import run
from tests.migrator.helpers import psycopg_connect


def rolled_back_transactions() -> int:
    """The working database's rolled-back transactions, once every session of the run has ended and
    reported its statistics (a session reports them as it ends, a moment after its client closed it)."""
    connections.close_all()
    name = connection.settings_dict["NAME"]
    seen: list[int] = []
    with psycopg_connect("postgres") as conn:
        conn.autocommit = True
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute("SELECT xact_rollback FROM pg_stat_database WHERE datname = %s", [name]).fetchone()
            assert row is not None
            seen.append(int(row[0]))
            others = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name]
            ).fetchone()
            if others == (0,) and len(seen) >= 2 and seen[-1] == seen[-2]:
                break
            time.sleep(0.1)
    return seen[-1]


@pytest.mark.parametrize("mode", [(), ("--online",)], ids=["offline", "online"])
def test_a_data_run_makes_no_server_error(schemas_ready: dict[str, Any], mode: tuple[str, ...]) -> None:
    before = rolled_back_transactions()
    run("migrate_phase", "data", *mode, interactive=False)
    assert rolled_back_transactions() == before
