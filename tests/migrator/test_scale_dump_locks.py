"""Phase 1's pg_dump stays within the server's lock table: at a thousand tenants, a parallel dump
(the leader's lock on every table plus each worker's) ran out of shared memory on a default server."""

from __future__ import annotations

from typing import Any

import pytest

from migrator.core.errors import MigrationError
from migrator.ops.backup import DUMP_LOCK_SHARE, LockBudget, dump_jobs, lock_budget
from tests.migrator.helpers import one_line, value

DEFAULT_SERVER = {"locks_per_transaction": 64, "connections": 100}  # 6,400 slots


def test_a_parallel_dump_that_would_overflow_the_lock_table_runs_with_one_job() -> None:
    assert dump_jobs(2, LockBudget(tables=300, **DEFAULT_SERVER)) == 2
    # 1,000 legacy tenants: 5,000 tables; leader and workers would need 10,000 locks
    assert dump_jobs(2, LockBudget(tables=5_000, **DEFAULT_SERVER)) == 1
    assert dump_jobs(1, LockBudget(tables=5_000, **DEFAULT_SERVER)) == 1


def test_a_dump_whose_leader_cannot_lock_every_table_is_refused_with_the_setting_to_raise() -> None:
    with pytest.raises(MigrationError) as exc:
        dump_jobs(2, LockBudget(tables=50_000, **DEFAULT_SERVER))  # 10,000 tenants
    message = str(exc.value)
    assert one_line(message)
    needed = int(message.split("max_locks_per_transaction to at least ")[1].split()[0])
    assert needed * DEFAULT_SERVER["connections"] * DUMP_LOCK_SHARE >= 50_000
    assert "restart PostgreSQL" in message


def test_the_budget_counts_the_tables_pg_dump_locks_and_the_servers_slots(seeded: dict[str, Any]) -> None:
    budget = lock_budget()
    assert budget.tables == value(
        "SELECT count(*) FROM pg_class WHERE relkind IN ('r', 'p', 'm', 'f') "
        "AND relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)"
    )
    assert budget.tables >= 5 * len(seeded["tenants"])
    assert budget.slots == value(
        "SELECT current_setting('max_locks_per_transaction')::int * (current_setting('max_connections')::int "
        "+ current_setting('max_prepared_transactions')::int)"
    )
    assert dump_jobs(2, budget) == 2  # a small database keeps its parallel dump
