"""Migration records cannot be added, changed or deleted through the admin, not even by a superuser;
tenants cannot be added or deleted there (that is the migrator's job), and their migration state
is read-only."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from migrator.models import MigrationRecord, Status
from tenants.models import MigrationState, Tenant


@pytest.fixture
def failed(make_record) -> MigrationRecord:
    error = (
        "tenant_acme_0001.contacts has columns with no target column: loyalty; nothing was copied\n"
        "second line of the error with a very long token " + "x" * 400
    )
    return make_record(
        "data",
        "copy_table",
        "acme_0001",
        Status.FAILED,
        target="contact_data_contacts",
        error_message=error,
        rows_copied=0,
        rows_expected=120,
        details={"message": "refused"},
    )


@pytest.mark.django_db
def test_records_cannot_be_added(superuser_client: Client) -> None:
    assert superuser_client.get(reverse("admin:migrator_migrationrecord_add")).status_code == 403
    response = superuser_client.post(
        reverse("admin:migrator_migrationrecord_add"),
        {"migration_id": "x", "phase": "data", "step": "x", "status": "COMPLETED"},
    )
    assert response.status_code == 403
    assert not MigrationRecord.objects.exists()


@pytest.mark.django_db
def test_records_cannot_be_changed(superuser_client: Client, failed: MigrationRecord) -> None:
    url = reverse("admin:migrator_migrationrecord_change", args=[failed.pk])
    page = superuser_client.get(url)
    assert page.status_code == 200
    content = page.content.decode()
    assert 'name="_save"' not in content
    assert 'name="status"' not in content  # every field is shown read-only
    response = superuser_client.post(url, {"status": Status.COMPLETED, "error_message": ""})
    assert response.status_code == 403
    failed.refresh_from_db()
    assert failed.status == Status.FAILED
    assert failed.error_message


@pytest.mark.django_db
def test_records_cannot_be_deleted(superuser_client: Client, failed: MigrationRecord) -> None:
    url = reverse("admin:migrator_migrationrecord_delete", args=[failed.pk])
    assert superuser_client.get(url).status_code == 403
    assert superuser_client.post(url, {"post": "yes"}).status_code == 403
    bulk = superuser_client.post(
        reverse("admin:migrator_migrationrecord_changelist"),
        {"action": "delete_selected", "_selected_action": [failed.pk], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    assert MigrationRecord.objects.filter(pk=failed.pk).exists()
    listing = superuser_client.get(reverse("admin:migrator_migrationrecord_changelist")).content.decode()
    assert "delete_selected" not in listing


@pytest.mark.django_db
def test_error_text_is_shown_in_full_on_the_detail_page(viewer_client: Client, failed: MigrationRecord) -> None:
    page = viewer_client.get(reverse("admin:migrator_migrationrecord_change", args=[failed.pk])).content.decode()
    assert "x" * 400 in page
    assert "no target column: loyalty" in page
    assert "every attempt of this step" in page
    assert "refused" in page  # the step's message from details


@pytest.mark.django_db
def test_record_list_filters_and_search(viewer_client: Client, make_record, failed: MigrationRecord) -> None:
    make_record("data", "copy_table", "globex_0002", target="contact_data_contacts", rows_copied=120, rows_expected=120)
    make_record("prepare", "backup")
    url = reverse("admin:migrator_migrationrecord_changelist")

    def ids(query: dict[str, str]) -> set[str]:
        response = viewer_client.get(url, query)
        assert response.status_code == 200
        return {r.migration_id for r in response.context["cl"].result_list}

    assert ids({"status__exact": Status.FAILED}) == {failed.migration_id}
    assert ids({"phase": "prepare"}) == {"prepare/*/backup"}
    assert ids({"tenant_id": "globex_0002"}) == {"data/globex_0002/copy_table/contact_data_contacts"}
    assert ids({"tenant_id": "-"}) == {"prepare/*/backup"}
    assert ids({"q": "loyalty"}) == {failed.migration_id}
    assert ids({"started_at__year": "2026"}) == {
        failed.migration_id,
        "prepare/*/backup",
        "data/globex_0002/copy_table/contact_data_contacts",
    }
    assert ids({"migration_id": failed.migration_id}) == {failed.migration_id}


@pytest.mark.django_db
def test_record_list_columns(viewer_client: Client, make_record) -> None:
    make_record(
        "data",
        "validate",
        "acme_0001",
        target="contact_data_contacts",
        rows_copied=1200,
        rows_expected=1200,
        source_fingerprint="1200:abc",
        target_fingerprint="1200:abc",
    )
    page = viewer_client.get(reverse("admin:migrator_migrationrecord_changelist")).content.decode()
    assert "3 data" in page  # phase with its number
    assert "1,200 / 1,200" in page
    assert "sf-status-completed" in page
    assert "icon-yes.svg" in page  # fingerprints match
    assert "1.0 s" in page  # duration


@pytest.mark.django_db
def test_tenants_cannot_be_added_or_deleted(superuser_client: Client, make_tenant) -> None:
    tenant = make_tenant("acme_0001")
    assert superuser_client.get(reverse("admin:tenants_tenant_add")).status_code == 403
    assert superuser_client.get(reverse("admin:tenants_tenant_delete", args=[tenant.pk])).status_code == 403
    assert Tenant.objects.filter(pk=tenant.pk).exists()


@pytest.mark.django_db
def test_tenant_name_is_editable_but_migration_state_is_not(superuser_client: Client, make_tenant) -> None:
    tenant = make_tenant("acme_0001", domains=("acme.example.com",))
    domain = tenant.domains.get()
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    assert superuser_client.get(url).status_code == 200
    response = superuser_client.post(
        url,
        {
            "name": "Acme Corp",
            "active": "",
            "migration_state": MigrationState.LIVE,
            "tenant_id": "evil",
            "domains-TOTAL_FORMS": "1",
            "domains-INITIAL_FORMS": "1",
            "domains-MIN_NUM_FORMS": "0",
            "domains-MAX_NUM_FORMS": "1000",
            "domains-0-id": str(domain.pk),
            "domains-0-tenant": str(tenant.pk),
            "domains-0-domain": "acme.example.org",
            "domains-0-is_primary": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant.refresh_from_db()
    assert tenant.name == "Acme Corp"
    assert tenant.active is False
    assert tenant.migration_state == MigrationState.REGISTERED
    assert tenant.tenant_id == "acme_0001"
    assert list(tenant.domains.values_list("domain", flat=True)) == ["acme.example.org"]


@pytest.mark.django_db
def test_viewer_sees_tenant_read_only(viewer_client: Client, make_tenant) -> None:
    tenant = make_tenant("acme_0001")
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    page = viewer_client.get(url).content.decode()
    assert 'name="_save"' not in page
    assert viewer_client.post(url, {"name": "x"}).status_code == 403
