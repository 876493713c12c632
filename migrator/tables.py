"""What the legacy layout is made of, and how each legacy table maps onto the target layout."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.apps import apps

from salesflow.layout import namespaced_table

LEGACY_AUTH_TABLES: tuple[str, ...] = ("users", "roles", "permissions", "role_permissions", "user_roles")
AUTH_MODELS: dict[str, str] = {
    "users": "accounts.User", "roles": "accounts.Role", "permissions": "accounts.Permission",
    "role_permissions": "accounts.RolePermission", "user_roles": "accounts.UserRole",
}

# Tenant tables of the legacy layout, parents first.
LEGACY_TENANT_TABLES: tuple[str, ...] = ("contact_types", "tag_categories", "activity_types", "contacts", "activities")


@dataclass(frozen=True)
class ReferenceTable:
    """A per-tenant legacy table merged into one shared service table, matched on ``key``."""

    legacy_table: str
    schema: str
    table: str
    key: str
    model: str

    @property
    def map_name(self) -> str:
        return self.legacy_table


REFERENCE_TABLES: tuple[ReferenceTable, ...] = (
    ReferenceTable("contact_types", "contact", "contact_types", key="code", model="contact.ContactType"),
    ReferenceTable("tag_categories", "contact", "tag_categories", key="name", model="contact.TagCategory"),
    ReferenceTable("activity_types", "activity", "activity_types", key="code", model="activity.ActivityType"),
)


@dataclass(frozen=True)
class TenantDataTable:
    """A legacy tenant table copied into a namespaced table of the same tenant schema.

    ``remap`` names the columns whose values are ids of a merged reference table: they are
    translated through ``public.migrator_reference_map`` on the way.
    """

    legacy_table: str
    namespace: str
    table: str
    model: str
    remap: dict[str, str] = field(default_factory=dict)

    @property
    def target_table(self) -> str:
        return namespaced_table(self.namespace, self.table)


TENANT_DATA_TABLES: tuple[TenantDataTable, ...] = (
    TenantDataTable("contacts", "contact_data", "contacts", "contact_data.Contact",
                    remap={"contact_type_id": "contact_types"}),
    TenantDataTable("activities", "activity_data", "activities", "activity_data.Activity",
                    remap={"activity_type_id": "activity_types"}),
)


def reference_table(legacy_table: str) -> ReferenceTable:
    return next(ref for ref in REFERENCE_TABLES if ref.legacy_table == legacy_table)


def model_columns(model_label: str) -> list[str]:
    """Columns of the target table behind a Django model, in field order."""
    return [f.column for f in apps.get_model(model_label)._meta.local_fields if f.column]


def legacy_tenant_model(legacy_table: str) -> str:
    for ref in REFERENCE_TABLES:
        if ref.legacy_table == legacy_table:
            return ref.model
    return next(t.model for t in TENANT_DATA_TABLES if t.legacy_table == legacy_table)


def unmapped_columns(legacy_columns: list[str], model_label: str) -> list[str]:
    """Legacy columns the target has no column for: copying would drop their data."""
    target = set(model_columns(model_label))
    return [c for c in legacy_columns if c not in target]
