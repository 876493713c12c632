"""The admin site as production meets it: a phase committing while an operator saves a tenant, thousands
of tenants and of schemas a deploy cannot migrate, and query strings no form would send."""

from __future__ import annotations

import pytest
from django.db.models.signals import pre_save
from django.test import Client
from django.urls import reverse

from migrator.reports.dashboard import PROBLEMS_SHOWN
from tenants.models import MigrationState, Tenant


@pytest.mark.django_db
def test_saving_a_tenant_keeps_the_state_a_phase_committed_meanwhile(superuser_client: Client, make_tenant) -> None:
    tenant = make_tenant("acme_0001", state=MigrationState.DATA_MIGRATED)
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    form = {
        "name": "Acme Corp",
        "active": "on",
        "domains-TOTAL_FORMS": "0",
        "domains-INITIAL_FORMS": "0",
        "domains-MIN_NUM_FORMS": "0",
        "domains-MAX_NUM_FORMS": "1000",
    }

    def phase_commits_first(sender: type, instance: Tenant, **_kwargs: object) -> None:
        # cutover sets the tenant live between the admin's read of the row and its write
        Tenant.objects.filter(pk=instance.pk).update(migration_state=MigrationState.LIVE)

    pre_save.connect(phase_commits_first, sender=Tenant)
    try:
        response = superuser_client.post(url, form)
    finally:
        pre_save.disconnect(phase_commits_first, sender=Tenant)

    assert response.status_code == 302, response.content.decode()[:1000]
    tenant.refresh_from_db()
    assert tenant.name == "Acme Corp"
    assert tenant.migration_state == MigrationState.LIVE


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["tenant_id=%00", "phase=%00", "migration_id=%00", "q=a%00b"])
def test_a_nul_character_in_the_query_is_a_bad_request_not_a_server_error(superuser_client: Client, query) -> None:
    response = superuser_client.get(reverse("admin:migrator_migrationrecord_changelist") + "?" + query)

    assert response.status_code == 400


@pytest.mark.django_db
def test_thousands_of_tenants_are_not_each_listed_in_the_records_filter(superuser_client: Client) -> None:
    Tenant.objects.bulk_create(
        Tenant(tenant_id=f"t{n:04d}", schema_name=f"tenant_t{n:04d}", name=f"T {n}") for n in range(250)
    )
    url = reverse("admin:migrator_migrationrecord_changelist")

    def choices(query: str) -> list[str]:
        changelist = superuser_client.get(url + query).context["cl"]
        spec = next(s for s in changelist.filter_specs if getattr(s, "parameter_name", None) == "tenant_id")
        return [str(choice["display"]) for choice in spec.choices(changelist)]

    assert choices("") == ["All", "(phase-wide steps)"]  # the phase-wide steps stay one click away
    assert superuser_client.get(url).content.decode().count("?tenant_id=t0") == 0
    # the tenant chosen (from its own page's link) is shown as chosen, and it alone
    assert choices("?tenant_id=t0123") == ["All", "(phase-wide steps)", "t0123"]


@pytest.mark.django_db
def test_the_dashboard_lists_at_most_fifty_schemas_a_deploy_cannot_migrate(superuser_client: Client) -> None:
    missing = PROBLEMS_SHOWN + 10
    Tenant.objects.bulk_create(  # registered, their schemas gone
        Tenant(tenant_id=f"t{n:04d}", schema_name=f"tenant_t{n:04d}", name=f"T {n}") for n in range(missing)
    )

    page = superuser_client.get(reverse("admin:migrator_migrationrecord_dashboard")).content.decode()

    assert page.count('class="deploy-problem"') == PROBLEMS_SHOWN
    assert "and 10 more" in page
