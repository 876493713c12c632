"""Verify's reads over every tenant stay within the server's lock table: at ten thousand tenants the
row counts (one statement over 20,000 tables) and the load test's key sampling (one transaction over
them) ran out of it ("out of shared memory"). The counts go a batch of tenants per statement; the
load test samples a spread of at most a hundred tenants, each read committed on its own."""

from __future__ import annotations

from typing import Any

import pytest

from migrator import catalog, db
from migrator.config import get_config
from migrator.engine import orchestration
from migrator.ops import load_test, verification
from migrator.tables import TENANT_DATA_TABLES
from tests.helpers import run


def test_row_counts_in_batches_count_every_tenant(migrated: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verification, "TENANTS_PER_COUNT", 1)
    tenants = sorted(migrated["tenants"])

    counts = verification.row_counts(tenants)

    assert sorted(counts) == tenants
    for tenant in tenants:
        for spec in TENANT_DATA_TABLES:
            assert counts[tenant][spec.legacy_table] == catalog.row_count(f"tenant_{tenant}", spec.table)


def test_spread_keeps_at_most_the_number_asked_evenly_spaced() -> None:
    names = [f"tenant_{n:05d}" for n in range(10_000)]
    picked = load_test.spread(names, 100)
    assert len(picked) == 100
    assert picked[0] == names[0]
    assert picked[1] == names[100]
    assert picked == sorted(set(picked))
    assert load_test.spread(names[:3], 100) == names[:3]


def test_the_load_test_runs_on_a_spread_of_the_tenants(
    migrated: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(load_test, "MAX_TENANTS_LOADED", 1)
    run("migrate_phase", "security", interactive=False)
    schemas = [f"tenant_{t}" for t in sorted(migrated["tenants"])]

    problems, details = load_test.run_load_test(get_config(), schemas, 1, 0.3, 4, 10_000.0)

    assert problems == []
    assert details.tenants == 1
    assert any(f"1 of the {len(schemas)} tenants" in note for note in details.notes)


def test_a_phase_of_many_steps_refreshes_the_tracking_tables_statistics(
    seeded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 10,000 tenants the tracking table had 150,000 rows and no statistics (autovacuum had not got
    to it): the dashboard's newest-attempt query sorted on disk, 1.0 s; 0.56 s once analyzed."""
    monkeypatch.setattr(orchestration, "ANALYZE_TRACKING_FROM_STEPS", 1)

    run("migrate_phase", "prepare", interactive=False)

    rows, estimated = db.fetchone(
        "SELECT (SELECT count(*) FROM public.schema_migrations), reltuples FROM pg_class "
        "WHERE oid = 'public.schema_migrations'::regclass"
    )
    assert estimated == rows  # a small table is analyzed whole: the estimate is exact
