"""The target layout after Django's migrations: service schemas and tables, and nothing of a service in ``public``."""

from __future__ import annotations

import pytest
from django.apps import apps

from migrator.tables import TENANT_DATA_TABLES, service_tables, tenant_table_names
from salesflow.layout import namespaced_table, service_db_table
from tests.migrator.helpers import rows, table_names, value

pytestmark = pytest.mark.django_db

SERVICE_APPS = ("accounts", "contact", "activity")
TENANT_APPS = ("contact_data", "activity_data")
SERVICE_SCHEMAS = service_tables()
LEGACY_NAMES = {
    "users",
    "roles",
    "permissions",
    "role_permissions",
    "user_roles",
    "contact_types",
    "tag_categories",
    "activity_types",
    "contacts",
    "activities",
}


def test_the_plans_verification_queries_find_the_service_layout():
    # The plan's own queries, verbatim.
    schemas = {
        r[0]
        for r in rows(
            "SELECT schema_name FROM information_schema.schemata "
            "WHERE schema_name IN ('public', 'auth', 'contact', 'activity') OR schema_name LIKE 'tenant_%'"
        )
    }
    auth_tables = {r[0] for r in rows("SELECT table_name FROM information_schema.tables WHERE table_schema = 'auth'")}
    service_tables = value(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema IN ('auth','contact','activity')"
    )

    assert {"public", "auth", "contact", "activity"} <= schemas
    assert auth_tables == {"users", "roles", "user_roles", "permissions", "role_permissions"}
    assert service_tables == 8


@pytest.mark.parametrize("schema", sorted(SERVICE_SCHEMAS))
def test_each_service_schema_holds_exactly_its_tables(schema):
    assert table_names(schema) == set(SERVICE_SCHEMAS[schema])


def test_service_models_point_at_their_schema():
    for app_label in SERVICE_APPS:
        for model in apps.get_app_config(app_label).get_models():
            schema, _, table = model._meta.db_table.partition('"."')
            assert schema in SERVICE_SCHEMAS, model
            assert table in SERVICE_SCHEMAS[schema], model
            assert model._meta.db_table == service_db_table(schema, table)


def test_nothing_in_public_belongs_to_a_service_or_a_tenant():
    public = table_names("public")
    assert {"tenants", "domains", "schema_migrations", "django_migrations"} <= public
    assert not public & LEGACY_NAMES
    assert not set(tenant_table_names()) & public
    assert not [t for t in public if t.startswith(tuple(f"{app}_" for app in SERVICE_APPS + TENANT_APPS))]
    # the service schemas hold nothing but service tables (no django_migrations of their own, no tenant tables)
    for schema in SERVICE_SCHEMAS:
        assert not table_names(schema) & (set(tenant_table_names()) | {"django_migrations", "tenants"})


def test_namespaced_table_names_are_built_in_one_place():
    assert namespaced_table("contact_data", "contacts") == "contact_data_contacts"
    assert namespaced_table("activity_data", "activities") == "activity_data_activities"
    assert list(tenant_table_names()) == [namespaced_table(t.namespace, t.legacy_table) for t in TENANT_DATA_TABLES]
    for app_label in TENANT_APPS:
        for model in apps.get_app_config(app_label).get_models():
            assert model._meta.db_table == namespaced_table(app_label, model._meta.db_table[len(app_label) + 1 :])
    with pytest.raises(KeyError):
        namespaced_table("no_such_namespace", "activities")
    with pytest.raises(KeyError):
        service_db_table("public", "users")
