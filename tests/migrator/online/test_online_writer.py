"""The online migration under a concurrent writer: nothing lost, untouched rows identical, writes blocked briefly
(when `data --online` starts the two-way sync; cutover blocks nothing)."""

from __future__ import annotations

import threading
import time

from tests.helpers import run
from tests.migrator.helpers import rows
from tests.migrator.online.writer import (
    TENANT,
    TENANT_TABLES,
    Writer,
    assert_committed_writes_in_new_tables,
    assert_sides_equal,
    untouched_rows_differing,
)

WRITE_BLOCKED_BOUND = 1.0  # seconds: the bound on a write held up per tenant


def writes_blocked_ms(phase: str, step: str) -> list[float]:
    """``writes_blocked_ms`` of every completed ``step`` of ``phase``."""
    return [
        float(r[0])
        for r in rows(
            "SELECT (details ->> 'writes_blocked_ms')::float FROM public.schema_migrations "
            "WHERE phase = %s AND step = %s AND status = 'COMPLETED' AND details ? 'writes_blocked_ms'",
            [phase, step],
        )
    ]


def test_every_committed_write_survives_the_whole_online_run(schemas_ready):
    writer = Writer()
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        data_started = len(writer.latencies)
        run("migrate_phase", "data", "--online", "--batch-size", "50", interactive=False)
        data_ended = len(writer.latencies)
        run("migrate_phase", "security", interactive=False)
        run("migrate_phase", "verify", interactive=False)
        cutover_started = len(writer.latencies)
        run("migrate_phase", "cutover", interactive=False)
        cutover_ended = len(writer.latencies)
        time.sleep(0.3)
    finally:
        writer.stop.set()
        thread.join(timeout=30)
    assert writer.errors == []
    assert writer.deadlocks == 0
    assert len(writer.latencies) > 100
    # writes wait for the short transaction that starts each scope's two-way sync, and for nothing at cutover
    blocked = writes_blocked_ms("data", "start_two_way_sync")
    assert len(blocked) == 4  # auth and three tenants
    assert max(blocked) < WRITE_BLOCKED_BOUND * 1000
    worst = max(writer.latencies[max(data_started - 5, 0) : data_ended + 5])
    assert worst < WRITE_BLOCKED_BOUND, f"a write was blocked {worst:.3f} s by data --online"
    worst = max(writer.latencies[max(cutover_started - 5, 0) : cutover_ended + 5])
    assert worst < WRITE_BLOCKED_BOUND, f"a write was blocked {worst:.3f} s at cutover"
    assert writes_blocked_ms("cutover", "archive_legacy") == [0.0] * 3
    # after cutover both sides still hold every write the writer made through the legacy names
    assert_committed_writes_in_new_tables(writer)
    assert_sides_equal(TENANT)
    run("migrate_phase", "finalize", observe_seconds=0.2, interactive=False)
    # rows it did not touch are identical to the legacy rows (archived by finalize)
    touched = {"contacts": set(writer.phones), "activities": writer.touched_activities | writer.deleted_activities}
    for legacy, target in TENANT_TABLES:
        assert untouched_rows_differing(TENANT, legacy, target, touched[legacy]) == 0, legacy
