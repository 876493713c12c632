"""The load test's figures as verify's step stores them: written and read back by the same type."""

from __future__ import annotations

import json

from migrator.ops.load_figures import LEGACY, NEW, LayoutFigures, LoadTestFigures, QueryFigures


def figures(**changes: object) -> LoadTestFigures:
    query = QueryFigures(queries=40, qps=80.0, p50_ms=0.2, p95_ms=0.9, p99_ms=1.5, error=None)
    failed = QueryFigures(queries=0, qps=None, p50_ms=None, p95_ms=None, p99_ms=None, error="permission denied")
    values: dict = {
        "clients": 2,
        "seconds": 1.5,
        "queries_wanted": 80,
        "max_regression_percent": 50.0,
        "noise_floor_ms": 5.0,
        "method": "threaded client",
        "layouts": {
            LEGACY: LayoutFigures(0.5, {"contact by email": query}),
            NEW: LayoutFigures(0.5, {"contact by email": query, "contact insert and update": failed}),
        },
        "notes": ["one note"],
        "tenants": 3,
        "elapsed_seconds": 0.5,
    }
    return LoadTestFigures(**{**values, **changes})


def test_figures_read_back_from_their_stored_json_are_the_same():
    stored = json.loads(json.dumps(figures().to_json()))  # as the step's details column holds them

    assert stored["layouts"][NEW]["queries"]["contact insert and update"]["error"] == "permission denied"
    assert stored["tenants"] == 3
    assert LoadTestFigures.from_json(stored) == figures()


def test_nothing_loaded_stores_no_tenants_or_elapsed_time():
    nothing = figures(layouts={}, tenants=None, elapsed_seconds=None)
    stored = json.loads(json.dumps(nothing.to_json()))

    assert "tenants" not in stored
    assert "elapsed_seconds" not in stored
    assert LoadTestFigures.from_json(stored) == nothing
