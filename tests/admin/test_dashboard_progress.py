"""The dashboard's progress endpoint: the page's changing numbers as JSON, read-only, and the page's hooks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client
from django.urls import reverse

from migrator.models import Status
from tenants.models import MigrationState

PROGRESS = "admin:migrator_migrationrecord_dashboard_progress"


@pytest.fixture
def running_data_phase(make_tenant: Callable, make_record: Callable) -> None:
    """Two tenants: phases 1 and 2 done for both, acme's copy done, globex's copy running half way."""
    for tenant_id in ("acme", "globex"):
        make_tenant(tenant_id, state=MigrationState.SCHEMAS_READY)
        make_record("prepare", "register", tenant_id, target=f"tenant_{tenant_id}")
        make_record("schemas", "tenant_tables", tenant_id, target=f"tenant_{tenant_id}")
    make_record("data", "copy_table", "acme", target="contact_data_contacts", rows_copied=40, rows_expected=40)
    make_record(
        "data", "copy_table", "globex", Status.RUNNING, target="contact_data_contacts", rows_copied=5, rows_expected=30
    )


@pytest.mark.django_db
def test_progress_reports_the_running_phase(viewer_client: Client, running_data_phase: None) -> None:
    response = viewer_client.get(reverse(PROGRESS))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    progress = response.json()
    assert progress["running"] is True
    assert progress["tenants"] == 2
    assert progress["current_phase"] == {"number": 3, "name": "data", "state": "running"}
    phases = {phase["name"]: phase for phase in progress["phases"]}
    assert {k: phases["data"][k] for k in ("done", "running", "failed", "pending", "percent_done")} == {
        "done": 1,
        "running": 1,
        "failed": 0,
        "pending": 0,
        "percent_done": 50,
    }
    assert [(p["state"], p["count"]) for p in phases["data"]["bar"]] == [("done", 1), ("running", 1)]
    [step] = progress["running_steps"]
    assert step["migration_id"] == "data/globex/copy_table/contact_data_contacts"
    assert (step["rows_copied"], step["rows_expected"]) == (5, 30)
    assert progress["totals"]["tenant_rows_moved"] == 45
    assert progress["failures_total"] == 0


@pytest.mark.django_db
def test_progress_says_when_nothing_runs(viewer_client: Client, make_tenant: Callable, make_record: Callable) -> None:
    make_tenant("acme")
    make_record("prepare", "register", "acme", target="tenant_acme")
    progress = viewer_client.get(reverse(PROGRESS)).json()
    assert progress["running"] is False
    assert progress["running_steps"] == []


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_progress_is_read_only(viewer_client: Client, method: str) -> None:
    assert getattr(viewer_client, method)(reverse(PROGRESS)).status_code == 405


@pytest.mark.django_db
def test_dashboard_page_polls_only_while_something_runs(
    viewer_client: Client, make_tenant: Callable, make_record: Callable
) -> None:
    make_tenant("acme")
    make_record("prepare", "register", "acme", target="tenant_acme")
    url = reverse("admin:migrator_migrationrecord_dashboard")
    page = viewer_client.get(url).content.decode()
    assert f'data-url="{reverse(PROGRESS)}"' in page
    assert 'data-running="false"' in page
    make_record("schemas", "tenant_tables", "acme", Status.RUNNING, target="tenant_acme")
    assert 'data-running="true"' in viewer_client.get(url).content.decode()
