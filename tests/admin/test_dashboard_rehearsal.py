"""The dashboard shows the latest rehearsal beside the plan and the real run, and the latest load test."""

from __future__ import annotations

import pytest
from django.urls import reverse

from migrator.models import Status
from migrator.ops.load_figures import LayoutFigures, LoadTestFigures, QueryFigures
from migrator.ops.rehearsal_report import (
    FailedStep,
    LegacyVolume,
    PhaseProjection,
    PhaseRun,
    Projection,
    RehearsalReport,
    RunSettings,
)
from migrator.reports.dashboard import build_dashboard

PHASE_NAMES = ("prepare", "schemas", "data", "security", "verify", "cutover")


def rehearsal_report(ok: bool = True) -> dict:
    phases = [
        PhaseRun(
            phase=name,
            ok=ok or name != "data",
            seconds=10.0 * (i + 1),
            steps=3,
            rows_moved=1000 if name == "data" else 0,
            failed=[] if ok or name != "data" else [FailedStep("data/acme/copy_table/x", "boom")],
        )
        for i, name in enumerate(PHASE_NAMES)
    ]
    projection = Projection(
        row_ratio=2.0,
        tenant_ratio=2.0,
        phases=[PhaseProjection(p.phase, "tenants", p.seconds * 2, p.seconds * 2, p.seconds * 2.5) for p in phases],
        total_expected_seconds=420.0,
        total_low_seconds=420.0,
        total_high_seconds=525.0,
        complete=ok,
        assumptions=["the same server"],
    )
    volume = LegacyVolume(tenants=2, rows=2000)
    return RehearsalReport(
        ok=ok,
        source_database="x",
        target_database="x_rehearsal",
        kept=False,
        backup_path="/backups/x.dump",
        backup_created_at="2026-01-01T00:00:00+00:00",
        options=RunSettings(jobs=2, batch_size=1000, tenants=[]),
        phases=phases,
        not_run=[],
        seconds=sum(p.seconds for p in phases),
        rehearsed_volume=volume,
        live_volume=volume,
        projection=projection,
        cleaned_up_before=[],
        roles_dropped=[],
        notes=[],
    ).to_json()


def load_figures() -> dict:
    def stats(p95: float) -> QueryFigures:
        return QueryFigures(queries=100, qps=50.0, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95 * 2, error=None)

    return LoadTestFigures(
        clients=4,
        seconds=10.0,
        queries_wanted=0,
        max_regression_percent=50.0,
        noise_floor_ms=5.0,
        method="threaded client",
        layouts={
            "legacy": LayoutFigures(2.0, {"contact by email": stats(1.0)}),
            "new": LayoutFigures(2.0, {"contact by email": stats(4.0)}),
        },
    ).to_json()


@pytest.mark.django_db
def test_latest_rehearsal_and_load_test_on_the_dashboard(make_record, viewer_client) -> None:
    make_record("rehearse", "rehearsal", details={"rehearsal": rehearsal_report(ok=False)})
    make_record("rehearse", "rehearsal", attempt=2, details={"rehearsal": rehearsal_report()})
    make_record(
        "verify",
        "load_test",
        status=Status.FAILED,
        details={"load_test": load_figures(), "problems": ["contact by email: p95 4.00 ms ..."]},
    )

    dashboard = build_dashboard()
    assert dashboard.rehearsal is not None
    assert dashboard.rehearsal.ok
    rehearsed = {p.name: r for p, r in dashboard.timeline}
    assert rehearsed["data"].seconds == 30.0
    assert rehearsed["data"].projected_text == "1 min 0 s to 1 min 15 s"
    assert dashboard.rehearsal.projected_text == "7 min 0 s to 8 min 45 s"
    load = dashboard.load_test
    assert load is not None
    assert load.status == Status.FAILED
    assert load.problems
    (query,) = load.queries
    assert (query.name, query.legacy_bar, query.new_bar) == ("contact by email", 25.0, 100.0)

    page = viewer_client.get(reverse("admin:migrator_migrationrecord_dashboard")).content.decode()
    assert "7 min 0 s to 8 min 45 s" in page
    assert 'id="load-test"' in page
    assert "contact by email" in page
    assert "width:25.0%" in page
    assert "width:100.0%" in page


@pytest.mark.django_db
def test_dashboard_without_rehearsal_or_load_test(viewer_client) -> None:
    dashboard = build_dashboard()
    assert dashboard.rehearsal is None
    assert dashboard.load_test is None
    page = viewer_client.get(reverse("admin:migrator_migrationrecord_dashboard")).content.decode()
    assert "No rehearsal yet" in page
    assert "No load test yet" in page


def test_the_rehearsal_report_and_the_load_figures_read_back_as_they_were_written() -> None:
    for ok in (True, False):
        stored = rehearsal_report(ok)
        assert RehearsalReport.from_json(stored).to_json() == stored
    figures = load_figures()
    assert LoadTestFigures.from_json(figures).to_json() == figures
