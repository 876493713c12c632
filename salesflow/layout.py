"""The target layout, in one place.

PostgreSQL has no schemas inside schemas, so the plan's ``tenant_x.contact_data.contacts`` is
realised as the table ``contact_data_contacts`` in schema ``tenant_x``: namespace + ``_`` + table,
which is also Django's ``<app_label>_<model>`` convention for the tenant apps ``contact_data`` and
``activity_data``. :func:`namespaced_table` is the only place that builds such a name.

Service tables live in their own schemas (``auth``, ``contact``, ``activity``), not in ``public``:
django-tenants knows one shared schema only, so their models carry a schema-qualified ``db_table``
made by :func:`service_db_table`; ``salesflow.db_backend`` teaches Django's schema editor and
introspection to handle such names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TENANT_ID_PATTERN = r"^[a-z][a-z0-9_]{0,55}$"
TENANT_ID_RE = re.compile(TENANT_ID_PATTERN)
TENANT_SCHEMA_PREFIX = "tenant_"

SERVICE_SCHEMAS: dict[str, tuple[str, ...]] = {
    "auth": ("users", "roles", "permissions", "role_permissions", "user_roles"),
    "contact": ("contact_types", "tag_categories"),
    "activity": ("activity_types",),
}

# namespace -> tables inside every tenant schema, and the service that owns the namespace
TENANT_NAMESPACES: dict[str, tuple[str, ...]] = {
    "contact_data": ("contacts",),
    "activity_data": ("activities",),
}
NAMESPACE_SERVICE: dict[str, str] = {"contact_data": "contact", "activity_data": "activity"}


def namespaced_table(namespace: str, table: str) -> str:
    """Name of table ``table`` of namespace ``namespace`` inside a tenant schema."""
    if namespace not in TENANT_NAMESPACES or table not in TENANT_NAMESPACES[namespace]:
        raise KeyError(f"{namespace}.{table} is not part of the tenant layout")
    return namespace + "_" + table


def service_db_table(schema: str, table: str) -> str:
    """Django ``db_table`` value for a service table: quoted by Django as ``"schema"."table"``."""
    if schema not in SERVICE_SCHEMAS or table not in SERVICE_SCHEMAS[schema]:
        raise KeyError(f"{schema}.{table} is not part of the service layout")
    return schema + '"."' + table


def tenant_schema_name(tenant_id: str) -> str:
    if not TENANT_ID_RE.match(tenant_id):
        raise ValueError(
            f"invalid tenant id {tenant_id!r}: must match {TENANT_ID_PATTERN} "
            "(lowercase letter, then up to 55 lowercase letters, digits or _)"
        )
    return TENANT_SCHEMA_PREFIX + tenant_id


def tenant_id_from_schema(schema_name: str) -> str | None:
    """The tenant id of a ``tenant_<id>`` schema, or None when the name is not a valid tenant schema."""
    if not schema_name.startswith(TENANT_SCHEMA_PREFIX):
        return None
    tenant_id = schema_name[len(TENANT_SCHEMA_PREFIX):]
    return tenant_id if TENANT_ID_RE.match(tenant_id) else None


@dataclass(frozen=True)
class TenantTable:
    namespace: str
    table: str
    legacy_table: str

    @property
    def name(self) -> str:
        return namespaced_table(self.namespace, self.table)


def tenant_tables() -> tuple[TenantTable, ...]:
    """Tenant tables in load order (parents first): legacy ``contacts`` -> ``contact_data_contacts``."""
    return tuple(
        TenantTable(namespace, table, legacy_table=table)
        for namespace, tables in TENANT_NAMESPACES.items()
        for table in tables
    )


def reserved_schema_names(legacy_auth_schema: str, archive_schema: str) -> frozenset[str]:
    """Schemas no tenant may ever be pointed at."""
    return frozenset({"public", "information_schema", legacy_auth_schema, archive_schema, *SERVICE_SCHEMAS})


def is_reserved_schema(name: str, legacy_auth_schema: str, archive_schema: str) -> bool:
    return name.startswith("pg_") or name in reserved_schema_names(legacy_auth_schema, archive_schema)
