"""The admin lists and the dashboard cost a fixed number of queries, whatever the number of tenants
and records (no N+1): measured with 3 tenants and with 30, then bounded."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from migrator.models import Status
from tests.admin.helpers import register_details

# Measured for a staff user with view permissions; 4 of each are the session, the user and the user's
# and groups' permissions. Records list: + tenant filter, count, page, 2 date-hierarchy queries.
# Tenants list: + count, page (progress columns are subqueries), domains prefetch. Dashboard: + 10
# reads of the tracking tables (8 aggregates, the schemas phase 1 excluded and the tenants left out
# since, the latest rehearsal and load test), whether online capture is on, the registered tenants whose
# schema is missing and the last deploy's failures. The limits are the measured counts: no room for a
# query per row. The dashboard's progress endpoint (polled while a phase runs) reads the same model: the
# same queries.
MAX_QUERIES = {
    "admin:migrator_migrationrecord_changelist": 9,
    "admin:tenants_tenant_changelist": 7,
    # +1 each: the large tables in key ranges and their progress
    "admin:migrator_migrationrecord_dashboard": 19,
    "admin:migrator_migrationrecord_dashboard_progress": 19,
}


def populate(make_tenant: Callable, make_record: Callable, tenants: int, offset: int = 0) -> None:
    """Every tenant with a full history: registered, schemas, a failed then a completed copy, a validation."""
    make_record(
        "prepare",
        "backup",
        details={
            "backup": {
                "path": "/b.dump",
                "size": 10,
                "sha256": "ab" * 32,
                "toc_entries": 3,
                "server_major": 17,
                "created_at": "2026-03-02T09:00:00+00:00",
            }
        },
        attempt=offset + 1,
    )
    for n in range(offset, offset + tenants):
        tid = f"t{n:04d}"
        make_tenant(tid, domains=(f"{tid}.example.com",))
        make_record(
            "prepare", "register", tid, target=f"tenant_{tid}", details=register_details(10, 20), rows_expected=33
        )
        make_record("schemas", "tenant_tables", tid, target=f"tenant_{tid}")
        make_record("data", "copy_table", tid, Status.FAILED, target="contact_data_contacts", error_message="boom")
        make_record(
            "data", "copy_table", tid, attempt=2, target="contact_data_contacts", rows_copied=10, rows_expected=10
        )
        make_record("data", "validate", tid, Status.RUNNING, target="contact_data_contacts")


def count_queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


@pytest.mark.django_db
@pytest.mark.parametrize("name", list(MAX_QUERIES))
def test_query_count_does_not_grow_with_tenants(
    viewer_client: Client, make_tenant, make_record, name: str, django_assert_max_num_queries
) -> None:
    url = reverse(name)
    populate(make_tenant, make_record, 3)
    small = count_queries(viewer_client, url)
    populate(make_tenant, make_record, 27, offset=3)
    large = count_queries(viewer_client, url)
    assert large == small, f"{name}: {small} queries for 3 tenants, {large} for 30"
    with django_assert_max_num_queries(MAX_QUERIES[name]):
        viewer_client.get(url)


@pytest.mark.django_db
def test_filtered_and_searched_record_list_stays_flat(
    viewer_client: Client, make_tenant, make_record, django_assert_max_num_queries
) -> None:
    populate(make_tenant, make_record, 30)
    url = reverse("admin:migrator_migrationrecord_changelist")
    with django_assert_max_num_queries(MAX_QUERIES["admin:migrator_migrationrecord_changelist"]):
        response = viewer_client.get(url, {"status__exact": Status.FAILED, "q": "copy", "phase": "data"})
    assert len(response.context["cl"].result_list) == 30


@pytest.mark.django_db
def test_record_detail_page_queries(
    viewer_client: Client, make_tenant, make_record, django_assert_max_num_queries
) -> None:
    populate(make_tenant, make_record, 3)
    record = make_record(
        "data", "copy_table", "t0000", Status.FAILED, attempt=3, target="contact_data_contacts", error_message="boom"
    )
    with django_assert_max_num_queries(6):
        response = viewer_client.get(reverse("admin:migrator_migrationrecord_change", args=[record.pk]))
    assert response.status_code == 200
