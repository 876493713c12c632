"""The tenant registry: id validation, reserved schema names, new tenants, tenant isolation.

These tests run inside one transaction (``django_db``), so the schemas they create roll back with it.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.utils import ProgrammingError
from django_tenants.utils import schema_context, tenant_context

from migrator import catalog, db
from salesflow.activity.models import ActivityType
from salesflow.activity_data.models import Activity
from salesflow.contact.models import ContactType
from salesflow.contact_data.models import Contact
from salesflow.layout import is_reserved_schema, tenant_id_from_schema, tenant_schema_name
from tenants.models import MigrationState, Tenant
from tests.migrator.helpers import table_names

pytestmark = pytest.mark.django_db

RESERVED = [
    "public",
    "auth",
    "contact",
    "activity",
    "salesflow_auth",
    "salesflow_archive",
    "pg_catalog",
    "pg_toast",
    "pg_anything",
    "information_schema",
]
BAD_IDS = ["Acme", "1acme", "acme-co", "", "a" * 57, 'x"; drop table y; --', "_acme", "acme co", "tenant_Bad-Name"]


@pytest.mark.parametrize("tenant_id", BAD_IDS)
def test_invalid_tenant_ids_are_refused(tenant_id):
    with pytest.raises(ValidationError):
        Tenant(tenant_id=tenant_id, name="x").save()
    with pytest.raises(ValueError, match="invalid tenant id"):
        tenant_schema_name(tenant_id)
    assert tenant_id_from_schema("tenant_" + tenant_id) is None
    assert not Tenant.objects.exists()


@pytest.mark.parametrize("tenant_id", BAD_IDS[:4])
def test_database_refuses_invalid_tenant_ids_too(tenant_id):
    with pytest.raises(IntegrityError, match="tenants_tenant_id_valid"), transaction.atomic():
        db.execute(
            "INSERT INTO public.tenants (tenant_id, schema_name, name, active, migration_state, created_at, "
            "updated_at) VALUES (%s, 'tenant_' || %s, 'x', true, 'NEW', now(), now())",
            [tenant_id, tenant_id],
        )


@pytest.mark.parametrize("schema_name", RESERVED)
def test_reserved_schema_names_are_refused(schema_name):
    assert is_reserved_schema(schema_name, "salesflow_auth", "salesflow_archive")
    with pytest.raises(ValidationError, match="must be 'tenant_acme'"):
        Tenant(tenant_id="acme", schema_name=schema_name, name="Acme").save()
    # and in the database, whatever the ORM is bypassed with
    with pytest.raises(IntegrityError, match="tenants_schema_is_tenant_id"), transaction.atomic():
        db.execute(
            "INSERT INTO public.tenants (tenant_id, schema_name, name, active, migration_state, created_at, "
            "updated_at) VALUES ('acme', %s, 'Acme', true, 'NEW', now(), now())",
            [schema_name],
        )
    assert not Tenant.objects.exists()


def test_tenant_schema_colliding_with_a_configured_schema_is_refused(settings):
    """The legacy auth / archive schema names are configurable; a tenant may not take them."""
    settings.SALESFLOW = {**settings.SALESFLOW, "ARCHIVE_SCHEMA": "tenant_archive"}
    with pytest.raises(ValidationError, match="'tenant_archive' is reserved"):
        Tenant(tenant_id="archive", name="Archive").save()
    assert not catalog.schema_exists("tenant_archive")


def test_valid_names_are_not_reserved():
    for name in ("tenant_acme", "tenant_pg_x", "contacts", "authority"):
        assert not is_reserved_schema(name, "salesflow_auth", "salesflow_archive"), name
    assert tenant_id_from_schema("tenant_acme_0001") == "acme_0001"
    assert tenant_id_from_schema("tenant_") is None
    assert tenant_id_from_schema("other_acme") is None


def test_a_new_tenant_gets_its_schema_with_the_target_tables():
    tenant = Tenant(tenant_id="newco", name="New Co")
    tenant.save()

    assert tenant.schema_name == "tenant_newco"
    assert tenant.migration_state == MigrationState.NEW
    assert {"contact_data_contacts", "activity_data_activities"} <= table_names("tenant_newco")
    # shared tables stay in their service schemas, never copied into a tenant
    assert not table_names("tenant_newco") & {"contact_types", "activity_types", "users", "tenants"}


def test_orm_queries_in_a_tenant_never_see_another_tenants_rows():
    lead = ContactType.objects.create(code="lead", name="Lead")
    call = ActivityType.objects.create(code="call", name="Call")
    alpha, beta = Tenant(tenant_id="alpha", name="Alpha"), Tenant(tenant_id="beta", name="Beta")
    alpha.save()
    beta.save()
    with tenant_context(alpha):
        a1 = Contact.objects.create(first_name="Ann", contact_type=lead, created_at="2024-01-01T00:00Z")
        Contact.objects.create(first_name="Al", created_at="2024-01-01T00:00Z")
        Activity.objects.create(contact=a1, activity_type=call, subject="alpha call", created_at="2024-01-01T00:00Z")
    with schema_context("tenant_beta"):
        b1 = Contact.objects.create(first_name="Bob", created_at="2024-01-01T00:00Z")
        Activity.objects.create(contact=b1, activity_type=call, subject="beta call", created_at="2024-01-01T00:00Z")

    assert a1.pk == b1.pk == 1  # same ids in both tenants: only the schema tells them apart
    with tenant_context(alpha):
        assert sorted(Contact.objects.values_list("first_name", flat=True)) == ["Al", "Ann"]
        assert list(Activity.objects.values_list("subject", flat=True)) == ["alpha call"]
        assert Contact.objects.get(pk=1).first_name == "Ann"
        assert not Contact.objects.filter(first_name="Bob").exists()
    with schema_context("tenant_beta"):
        assert list(Contact.objects.values_list("first_name", flat=True)) == ["Bob"]
        assert list(Activity.objects.values_list("subject", flat=True)) == ["beta call"]
        assert Activity.objects.get().contact.first_name == "Bob"
    # outside any tenant there is no tenant table at all
    with pytest.raises(ProgrammingError, match="contact_data_contacts"), transaction.atomic():
        list(Contact.objects.all())
