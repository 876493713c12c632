"""The legacy table registry: every legacy table, one entry, and where it goes in the target layout.

Everything that needs to know the tables reads them from :data:`LEGACY_TABLES`: the copy plan
(phase 3), the service schemas (phases 2 and 5), grants (phase 4), verification, rollback,
restore, the admin's row counts and the tests. The target of an entry is its Django model's
``db_table``, so the model stays the one place of the target's name. Its columns are the catalog's
(migrator/ops/target_columns.py): deploys keep changing them during the migration.

Adding a legacy table is one model (+ its migration) and one entry here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from django.apps import apps
from django.db import connection

from salesflow.layout import NAMESPACE_SERVICE, SERVICES


class TableKind(StrEnum):
    AUTH = "auth"  # legacy auth schema -> service schema ``auth``, same ids
    REFERENCE = "reference"  # one per tenant -> one shared service table, merged on ``merge_key``
    TENANT_DATA = "tenant data"  # per tenant -> namespaced table in the same tenant schema


@dataclass(frozen=True)
class LegacyTable:
    """One legacy table and its target.

    ``key``: the columns that identify a row (copy order, checkpoints, fingerprints' differing keys).
    ``merge_key``: reference tables only: rows of different tenants with the same value are one
    shared row. ``remap``: tenant data only: column -> legacy reference table whose ids it holds;
    translated through ``public.migrator_reference_map`` on the way.
    """

    legacy_table: str
    kind: TableKind
    model: str
    key: tuple[str, ...] = ("id",)
    merge_key: str = ""
    remap: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def _db_table(self) -> str:
        return str(apps.get_model(self.model)._meta.db_table)

    @property
    def schema(self) -> str | None:
        """The target's schema; None for tenant data (the tenant's own schema)."""
        schema, sep, _ = self._db_table.partition('"."')
        return schema if sep else None

    @property
    def shared_schema(self) -> str:
        """Auth and reference tables: the service schema their shared target table is in."""
        if self.schema is None:
            raise ValueError(f"{self.legacy_table} is tenant data: its target is in each tenant's own schema")
        return self.schema

    @property
    def table(self) -> str:
        """The target table's name inside its schema."""
        return self._db_table.rpartition('"."')[2]

    @property
    def target_table(self) -> str:
        return self.table

    @property
    def namespace(self) -> str:
        """Tenant data: the namespace (the model's app label) the target table is prefixed with."""
        return str(apps.get_model(self.model)._meta.app_label)

    @property
    def service(self) -> str:
        """The service that owns the target (and whose role may use it)."""
        return self.schema if self.schema is not None else NAMESPACE_SERVICE[self.namespace]

    @property
    def map_name(self) -> str:
        """Reference tables: the name their id map is kept under."""
        return self.legacy_table


LEGACY_TABLES: tuple[LegacyTable, ...] = (
    LegacyTable("users", TableKind.AUTH, "accounts.User"),
    LegacyTable("roles", TableKind.AUTH, "accounts.Role"),
    LegacyTable("permissions", TableKind.AUTH, "accounts.Permission"),
    LegacyTable("role_permissions", TableKind.AUTH, "accounts.RolePermission", key=("role_id", "permission_id")),
    LegacyTable("user_roles", TableKind.AUTH, "accounts.UserRole", key=("user_id", "role_id")),
    # Tenant tables, parents first.
    LegacyTable("contact_types", TableKind.REFERENCE, "contact.ContactType", merge_key="code"),
    LegacyTable("tag_categories", TableKind.REFERENCE, "contact.TagCategory", merge_key="name"),
    LegacyTable("activity_types", TableKind.REFERENCE, "activity.ActivityType", merge_key="code"),
    LegacyTable(
        "contacts",
        TableKind.TENANT_DATA,
        "contact_data.Contact",
        remap=MappingProxyType({"contact_type_id": "contact_types"}),
    ),
    LegacyTable(
        "activities",
        TableKind.TENANT_DATA,
        "activity_data.Activity",
        remap=MappingProxyType({"activity_type_id": "activity_types"}),
    ),
)


def of_kind(*kinds: TableKind) -> tuple[LegacyTable, ...]:
    return tuple(t for t in LEGACY_TABLES if t.kind in kinds)


AUTH_TABLES = of_kind(TableKind.AUTH)
REFERENCE_TABLES = of_kind(TableKind.REFERENCE)
TENANT_DATA_TABLES = of_kind(TableKind.TENANT_DATA)
LEGACY_AUTH_TABLES: tuple[str, ...] = tuple(t.legacy_table for t in AUTH_TABLES)
AUTH_MODELS: dict[str, str] = {t.legacy_table: t.model for t in AUTH_TABLES}
# Tables of a legacy tenant schema, parents first.
LEGACY_TENANT_TABLES: tuple[str, ...] = tuple(
    t.legacy_table for t in of_kind(TableKind.REFERENCE, TableKind.TENANT_DATA)
)

# Kept for the names the phases use; both are views of LEGACY_TABLES.
ReferenceTable = LegacyTable
TenantDataTable = LegacyTable


def service_tables() -> dict[str, tuple[str, ...]]:
    """Service schema -> its tables (auth tables and merged reference tables), every service listed."""
    found: dict[str, list[str]] = {service: [] for service in SERVICES}
    for entry in of_kind(TableKind.AUTH, TableKind.REFERENCE):
        found[entry.service].append(entry.table)
    return {service: tuple(tables) for service, tables in found.items()}


def tenant_table_names() -> tuple[str, ...]:
    """The namespaced tables every tenant schema holds, parents first."""
    return tuple(t.table for t in TENANT_DATA_TABLES)


def legacy_table(name: str, kind: TableKind | None = None) -> LegacyTable:
    return next(t for t in LEGACY_TABLES if t.legacy_table == name and (kind is None or t.kind == kind))


def reference_table(name: str) -> LegacyTable:
    return legacy_table(name, TableKind.REFERENCE)


def tenant_data_table(target_table: str) -> LegacyTable:
    return next(t for t in TENANT_DATA_TABLES if t.table == target_table)


def auth_model(name: str) -> str:
    return legacy_table(name, TableKind.AUTH).model


def legacy_tenant_model(name: str) -> str:
    return next(t.model for t in LEGACY_TABLES if t.legacy_table == name and t.kind != TableKind.AUTH)


def model_columns(model_label: str) -> list[str]:
    """Columns the running release's Django model has, in field order.

    Only for questions asked before a target table exists (phase 1's inspection): the target's
    columns are the catalog's (a deploy may have added columns this release does not know, and this
    release may know columns whose migration a schema has not had yet).
    """
    return [f.column for f in apps.get_model(model_label)._meta.local_fields if f.column]


def unmapped_columns(legacy_columns: list[str], target_columns: Collection[str]) -> list[str]:
    """Legacy columns the target has no column for: copying would drop their data."""
    return [c for c in legacy_columns if c not in target_columns]


class NoDefault:
    """The model field of a column has no Django default this release could give (see :func:`field_default`)."""


NO_DEFAULT = NoDefault()


def field_default(model_label: str, column: str) -> object:
    """The value the running release's model gives ``column`` when a row is created without it, as the
    database stores it (JSON adapted, etc.); :data:`NO_DEFAULT` when the model has no such field or the
    field no default. A callable default is called once: every row filled with it gets that value.
    """
    model = apps.get_model(model_label)
    found = next((f for f in model._meta.local_concrete_fields if f.column == column), None)
    if found is None or not found.has_default():
        return NO_DEFAULT
    return found.get_db_prep_save(found.get_default(), connection)
