"""Who sees the admin pages: anonymous -> login, staff without view permission -> 403, viewers -> 200."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from migrator.models import Status
from tests.admin.helpers import PASSWORD, staff_user

DASHBOARD = "admin:migrator_migrationrecord_dashboard"
PROGRESS = "admin:migrator_migrationrecord_dashboard_progress"
RECORDS = "admin:migrator_migrationrecord_changelist"
TENANTS = "admin:tenants_tenant_changelist"


@pytest.fixture
def record(make_record):
    return make_record("prepare", "preflight")


def record_pages(record) -> list[str]:
    return [
        reverse(DASHBOARD),
        reverse(PROGRESS),
        reverse(RECORDS),
        reverse("admin:migrator_migrationrecord_change", args=[record.pk]),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("name", [DASHBOARD, PROGRESS, RECORDS, TENANTS, "admin:index"])
def test_anonymous_is_sent_to_login(client: Client, name: str) -> None:
    url = reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert f"next={url}" in response["Location"]


@pytest.mark.django_db
def test_active_user_who_is_not_staff_is_sent_to_login(record) -> None:
    user = User.objects.create_user("clerk", "clerk@example.com", PASSWORD)
    client = Client()
    client.force_login(user)
    for url in record_pages(record):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.django_db
def test_staff_without_view_permission_gets_403(record) -> None:
    client = Client()
    client.force_login(staff_user("intern"))
    for url in [*record_pages(record), reverse(TENANTS)]:
        assert client.get(url).status_code == 403, url
    index = client.get(reverse("admin:index"))
    assert index.status_code == 200
    assert b"migration-dashboard-link" not in index.content


@pytest.mark.django_db
def test_staff_with_tenant_permission_only_cannot_see_records(record) -> None:
    client = Client()
    client.force_login(staff_user("registrar", "tenants.view_tenant"))
    assert client.get(reverse(TENANTS)).status_code == 200
    for url in record_pages(record):
        assert client.get(url).status_code == 403, url


@pytest.mark.django_db
def test_staff_with_view_permission_sees_everything(viewer_client: Client, record) -> None:
    for url in [*record_pages(record), reverse(TENANTS)]:
        assert viewer_client.get(url).status_code == 200, url
    index = viewer_client.get(reverse("admin:index"))
    assert b"migration-dashboard-link" in index.content
    assert reverse(DASHBOARD).encode() in index.content


@pytest.mark.django_db
def test_superuser_sees_everything(superuser_client: Client, record) -> None:
    for url in [*record_pages(record), reverse(TENANTS), reverse("admin:index")]:
        assert superuser_client.get(url).status_code == 200, url
    assert b"migration-dashboard-link" in superuser_client.get(reverse("admin:index")).content


@pytest.mark.django_db
def test_record_list_links_to_dashboard(viewer_client: Client, make_record) -> None:
    make_record("prepare", "preflight", status=Status.FAILED, error_message="boom")
    response = viewer_client.get(reverse(RECORDS))
    assert reverse(DASHBOARD).encode() in response.content


@pytest.mark.django_db
def test_site_root_redirects_to_admin(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:index")
