"""The dashboard's numbers, computed from tracking rows written here with known statuses and times,
and the tenant admin's progress columns built from the same rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse

from migrator.models import MigrationRecord, Status
from migrator.reports.checks import format_duration
from migrator.reports.dashboard import build_dashboard
from tests.admin.helpers import T0, register_details

MIN = timedelta(minutes=1)
SHA = "0123456789abcdef" * 4


@pytest.fixture
def scenario(make_tenant, make_record) -> dict[str, MigrationRecord]:
    """Four tenants: prepare done; schemas 2 done, 1 running, 1 failed twice; data 1 done, 1 running.

    Legacy rows to copy (contacts + activities): a 300, b 600, c 300, d 0.
    """
    for tid in ("a", "b", "c", "d"):
        make_tenant(tid)
    rec = {}
    # Phase 1, from T0 to T0 + 10 min; the first backup attempt failed and was retried.
    make_record("prepare", "preflight", took=MIN)
    make_record("prepare", "backup", Status.FAILED, start=MIN, took=timedelta(seconds=30), error_message="disk full")
    rec["backup"] = make_record(
        "prepare",
        "backup",
        attempt=2,
        start=2 * MIN,
        took=4 * MIN,
        details={
            "backup": {
                "path": "/var/backups/salesflow-20260302.dump",
                "size": 7_340_032,
                "sha256": SHA,
                "toc_entries": 61,
                "server_major": 17,
                "created_at": "2026-03-02T09:06:00+00:00",
            }
        },
    )
    for n, (tid, contacts, activities) in enumerate([("a", 100, 200), ("b", 200, 400), ("c", 100, 200), ("d", 0, 0)]):
        make_record(
            "prepare",
            "register",
            tid,
            target=f"tenant_{tid}",
            start=(6 + n) * MIN,
            took=MIN,
            rows_expected=contacts + activities + 3,
            details=register_details(contacts, activities),
        )
    # Phase 2, from T0 + 60 min; last completion at T0 + 70 min.
    make_record("schemas", "service_schemas", start=60 * MIN, took=2 * MIN)
    make_record("schemas", "tenant_tables", "a", target="tenant_a", start=62 * MIN, took=4 * MIN)
    make_record("schemas", "tenant_tables", "b", target="tenant_b", start=66 * MIN, took=4 * MIN)
    make_record("schemas", "tenant_tables", "c", Status.RUNNING, target="tenant_c", start=70 * MIN)
    make_record(
        "schemas",
        "tenant_tables",
        "d",
        Status.FAILED,
        target="tenant_d",
        start=62 * MIN,
        took=MIN,
        error_message="relation already exists",
    )
    rec["failed"] = make_record(
        "schemas",
        "tenant_tables",
        "d",
        Status.FAILED,
        target="tenant_d",
        attempt=2,
        start=68 * MIN,
        took=MIN,
        error_message="could not extend file: No space left on device",
    )
    # Phase 3, from T0 + 120 min; last completion at T0 + 140 min.
    make_record("data", "copy_auth", target="users", start=120 * MIN, took=5 * MIN, rows_copied=50, rows_expected=50)
    make_record(
        "data",
        "copy_table",
        "a",
        Status.FAILED,
        target="contact_data_contacts",
        start=121 * MIN,
        took=MIN,
        rows_copied=40,
        error_message="interrupted",
    )
    make_record(
        "data",
        "copy_table",
        "a",
        target="contact_data_contacts",
        attempt=2,
        start=125 * MIN,
        took=5 * MIN,
        rows_copied=100,
        rows_expected=100,
    )
    make_record(
        "data",
        "copy_table",
        "a",
        target="activity_data_activities",
        start=130 * MIN,
        took=5 * MIN,
        rows_copied=200,
        rows_expected=200,
    )
    make_record(
        "data",
        "validate",
        "a",
        target="contact_data_contacts",
        start=135 * MIN,
        took=MIN,
        rows_copied=100,
        rows_expected=100,
        source_fingerprint="100:f1",
        target_fingerprint="100:f1",
    )
    rec["a_last"] = make_record(
        "data",
        "validate",
        "a",
        target="activity_data_activities",
        start=136 * MIN,
        took=4 * MIN,
        rows_copied=200,
        rows_expected=200,
        source_fingerprint="200:f2",
        target_fingerprint="200:f2",
    )
    rec["b_last"] = make_record(
        "data", "copy_table", "b", Status.RUNNING, target="contact_data_contacts", start=140 * MIN, rows_copied=50
    )
    return rec


def phase(dashboard, name):
    return next(p for p in dashboard.phases if p.name == name)


@pytest.mark.django_db
def test_phase_counts(scenario) -> None:
    dashboard = build_dashboard()
    assert dashboard.tenants == 4
    counts = {p.name: (p.done, p.running, p.failed, p.pending, p.phase_wide, p.state) for p in dashboard.phases}
    assert counts["prepare"] == (4, 0, 0, 0, "done", "done")
    assert counts["schemas"] == (2, 1, 1, 0, "done", "failed")
    assert counts["data"] == (1, 1, 0, 2, "done", "running")
    for later in [p.name for p in dashboard.phases if (p.number or 0) > 3]:
        assert counts[later] == (0, 0, 0, 4, None, "pending")
    assert dashboard.current_phase.name == "schemas"
    bar = {state: percent for state, _count, percent in phase(dashboard, "data").bar}
    assert bar == {"done": 25.0, "running": 25.0, "pending": 50.0}


@pytest.mark.django_db
def test_timeline_measured_and_projected(scenario) -> None:
    dashboard = build_dashboard()
    prepare, schemas, data = (phase(dashboard, n) for n in ("prepare", "schemas", "data"))
    assert prepare.estimate == "1 day"
    assert schemas.estimate == "2 hours"
    assert data.estimate == "4-8 hours"
    assert (prepare.started_at, prepare.finished_at) == (T0, T0 + 10 * MIN)
    assert prepare.measured == 10 * MIN
    assert prepare.remaining == timedelta(0)
    # 2 of 4 tenants done in 10 minutes: 2 more take 10 more minutes.
    assert schemas.measured == 10 * MIN
    assert schemas.remaining == 10 * MIN
    assert schemas.projected_total == 20 * MIN
    # Weighted by legacy rows: 300 of 1,200 done in 20 minutes, so 900 rows take 60 more.
    assert data.weighted_by_rows
    assert data.measured == 20 * MIN
    assert data.remaining == 60 * MIN
    assert data.measured_text == "20 min 0 s"
    assert data.remaining_text == "1 h 0 min"
    later = [p for p in dashboard.phases if (p.number or 0) > 3]
    assert all(p.measured is None and p.remaining is None for p in later)


@pytest.mark.django_db
def test_failures_are_latest_attempts_only(scenario) -> None:
    dashboard = build_dashboard()
    # The failed first attempts of the backup and of a's copy were retried successfully: history, not failures.
    assert [r.pk for r in dashboard.failures] == [scenario["failed"].pk]
    assert dashboard.failures_total == 1
    assert [r.migration_id for r in dashboard.running] == [
        "schemas/c/tenant_tables/tenant_c",
        "data/b/copy_table/contact_data_contacts",
    ]


@pytest.mark.django_db
def test_backup_and_row_totals(scenario) -> None:
    dashboard = build_dashboard()
    backup = dashboard.backup
    assert backup.record_id == scenario["backup"].pk
    assert (backup.path, backup.size, backup.sha256, backup.toc_entries) == (
        "/var/backups/salesflow-20260302.dump",
        7_340_032,
        SHA,
        61,
    )
    totals = dashboard.totals
    assert totals.legacy_rows == 1200
    assert totals.rows_moved == 50 + 100 + 200 + 50  # latest attempts only: not a's interrupted 40
    assert totals.tenant_rows_moved == 350
    assert totals.rows_validated == 300
    assert (totals.validations_passed, totals.validations_failed) == (2, 0)


@pytest.mark.django_db
def test_empty_tracking_table() -> None:
    dashboard = build_dashboard()
    assert dashboard.tenants == 0
    assert dashboard.backup is None
    assert dashboard.failures == []
    assert all(p.state == "pending" and p.remaining is None for p in dashboard.phases)
    assert dashboard.totals.rows_moved == 0


@pytest.mark.django_db
def test_dashboard_page(viewer_client: Client, scenario) -> None:
    response = viewer_client.get(reverse("admin:migrator_migrationrecord_dashboard"))
    assert response.status_code == 200
    page = response.content.decode()
    failed_url = reverse("admin:migrator_migrationrecord_change", args=[scenario["failed"].pk])
    assert f'href="{failed_url}"' in page
    assert "No space left on device" in page
    assert page.index("Failed steps (1)") < page.index("Progress by phase")  # failures first
    assert SHA in page
    assert "/var/backups/salesflow-20260302.dump" in page
    assert "7.0\xa0MB" in page
    assert "1,200" in page
    assert "4-8 hours" in page
    assert "1 h 0 min" in page
    assert 'class="sf-failed"' in page
    assert "width: 25.000%" in page
    # Scripts from this site only: an injected <script> or inline handler would not run.
    policy = dict(part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";"))
    assert policy["script-src"] == "'self'"
    assert (policy["object-src"], policy["frame-ancestors"]) == ("'none'", "'none'")
    assert "<script>" not in page
    assert " onclick=" not in page


@pytest.mark.django_db
def test_tenant_list_columns(viewer_client: Client, scenario) -> None:
    response = viewer_client.get(reverse("admin:tenants_tenant_changelist"))
    assert response.status_code == 200
    tenants = {t.tenant_id: t for t in response.context["cl"].result_list}
    assert (tenants["a"].legacy_rows, tenants["a"].migrated_rows) == (300, 300)
    assert (tenants["b"].legacy_rows, tenants["b"].migrated_rows) == (600, 50)
    assert (tenants["c"].legacy_rows, tenants["c"].migrated_rows) == (300, None)
    assert tenants["a"].last_step == {
        "id": scenario["a_last"].pk,
        "status": "COMPLETED",
        "phase": "data",
        "step": "validate",
        "target": "activity_data_activities",
        "migration_id": "data/a/validate/activity_data_activities",
    }
    assert tenants["b"].last_step["id"] == scenario["b_last"].pk
    assert tenants["b"].last_step["status"] == "RUNNING"
    assert tenants["d"].last_step["status"] == "FAILED"
    page = response.content.decode()
    assert reverse("admin:migrator_migrationrecord_change", args=[scenario["a_last"].pk]) in page


@pytest.mark.django_db
def test_tenant_list_filters_and_search(viewer_client: Client, make_tenant) -> None:
    make_tenant("acme_0001", state="DATA_MIGRATED")
    make_tenant("globex_0002", active=False)
    url = reverse("admin:tenants_tenant_changelist")

    def ids(query: dict[str, str]) -> list[str]:
        return [t.tenant_id for t in viewer_client.get(url, query).context["cl"].result_list]

    assert ids({"migration_state__exact": "DATA_MIGRATED"}) == ["acme_0001"]
    assert ids({"active__exact": "0"}) == ["globex_0002"]
    assert ids({"q": "globex"}) == ["globex_0002"]
    assert ids({"q": "Acme"}) == ["acme_0001"]  # by name


def test_format_duration() -> None:
    assert format_duration(None) == "—"
    assert format_duration(timedelta(seconds=0.42)) == "0.4 s"
    assert format_duration(timedelta(seconds=59.99)) == "1 min 0 s"
    assert format_duration(timedelta(minutes=3, seconds=12)) == "3 min 12 s"
    assert format_duration(timedelta(hours=2, minutes=5)) == "2 h 5 min"
    assert format_duration(timedelta(days=1, hours=3)) == "1 d 3 h"
