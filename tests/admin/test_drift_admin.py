"""The admin's drift report page: every finding of every tenant, read-only, filterable by kind and disposition."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from migrator.models import Disposition, DriftFinding, FindingKind

URL = "admin:migrator_driftfinding_changelist"


def add_findings(tenants: int, offset: int = 0) -> None:
    DriftFinding.objects.bulk_create(
        finding
        for n in range(offset, offset + tenants)
        for finding in (
            DriftFinding(
                tenant_schema=f"tenant_t{n:04d}",
                legacy_table="contacts",
                kind=FindingKind.EXTRA_COLUMN,
                object_name="score",
                detail="numeric(10,2)",
                disposition=Disposition.REFUSED,
                action="no target column",
            ),
            DriftFinding(
                tenant_schema=f"tenant_t{n:04d}",
                legacy_table="contacts",
                kind=FindingKind.CONSTRAINT,
                object_name="email_has_at",
                detail="CHECK ((email ~~ '%@%'::text))",
                disposition=Disposition.CARRIED,
                action="re-created on the new table and validated",
            ),
        )
    )


@pytest.mark.django_db
def test_findings_are_listed_per_tenant_and_filtered_by_kind_and_disposition(viewer_client: Client) -> None:
    add_findings(3)

    everything = viewer_client.get(reverse(URL))
    refused = viewer_client.get(reverse(URL), {"disposition__exact": Disposition.REFUSED})
    by_kind = viewer_client.get(reverse(URL), {"kind__exact": FindingKind.CONSTRAINT})
    one_tenant = viewer_client.get(reverse(URL), {"q": "tenant_t0001"})

    assert everything.status_code == 200
    assert len(everything.context["cl"].result_list) == 6
    assert {f.kind for f in refused.context["cl"].result_list} == {FindingKind.EXTRA_COLUMN}
    assert {f.object_name for f in by_kind.context["cl"].result_list} == {"email_has_at"}
    assert {f.tenant_schema for f in one_tenant.context["cl"].result_list} == {"tenant_t0001"}
    assert b"refused" in refused.content
    assert b"score" in refused.content


@pytest.mark.django_db
def test_findings_are_read_only(superuser_client: Client) -> None:
    add_findings(1)
    finding = DriftFinding.objects.first()
    assert finding is not None

    assert superuser_client.get(reverse("admin:migrator_driftfinding_add")).status_code == 403
    superuser_client.post(reverse("admin:migrator_driftfinding_delete", args=[finding.pk]), {"post": "yes"})
    page = superuser_client.get(reverse("admin:migrator_driftfinding_change", args=[finding.pk]))

    assert DriftFinding.objects.filter(pk=finding.pk).exists()
    assert page.status_code == 200
    assert b'name="_save"' not in page.content


@pytest.mark.django_db
def test_drift_page_query_count_does_not_grow_with_findings(
    viewer_client: Client, django_assert_max_num_queries
) -> None:
    add_findings(3)
    with django_assert_max_num_queries(8) as small:
        viewer_client.get(reverse(URL))
    add_findings(200, offset=3)
    with django_assert_max_num_queries(len(small.captured_queries)):
        response = viewer_client.get(reverse(URL))
    assert response.status_code == 200
