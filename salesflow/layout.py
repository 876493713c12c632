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

TENANT_ID_PATTERN = r"^[a-z][a-z0-9_]{0,55}$"
TENANT_ID_RE = re.compile(TENANT_ID_PATTERN)
TENANT_SCHEMA_PREFIX = "tenant_"

# The services, each with its own schema (and, from phase 4, its own role).
SERVICES: tuple[str, ...] = ("auth", "contact", "activity")
# Namespace of tenant tables -> the service that owns it. A namespace is a tenant app's label.
NAMESPACE_SERVICE: dict[str, str] = {"contact_data": "contact", "activity_data": "activity"}


def namespaced_table(namespace: str, table: str) -> str:
    """Name of table ``table`` of namespace ``namespace`` inside a tenant schema."""
    if namespace not in NAMESPACE_SERVICE:
        raise KeyError(f"{namespace}.{table}: {namespace} is not a namespace of the tenant layout")
    return namespace + "_" + table


def service_db_table(schema: str, table: str) -> str:
    """Django ``db_table`` value for a service table: quoted by Django as ``"schema"."table"``."""
    if schema not in SERVICES:
        raise KeyError(f"{schema}.{table}: {schema} is not a service schema")
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
    tenant_id = schema_name[len(TENANT_SCHEMA_PREFIX) :]
    return tenant_id if TENANT_ID_RE.match(tenant_id) else None


def is_tenant_schema_name(schema_name: str) -> bool:
    """Named like a tenant's schema (``tenant_...``), whether or not the rest is a valid tenant id."""
    return schema_name.startswith(TENANT_SCHEMA_PREFIX)


# A LIKE pattern that matches the names of tenant schemas (the prefix's ``_`` taken literally).
TENANT_SCHEMA_LIKE = TENANT_SCHEMA_PREFIX.replace("_", "\\_") + "%"


def reserved_schema_names(legacy_auth_schema: str, archive_schema: str) -> frozenset[str]:
    """Schemas no tenant may ever be pointed at."""
    return frozenset({"public", "information_schema", legacy_auth_schema, archive_schema, *SERVICES})


def is_reserved_schema(name: str, legacy_auth_schema: str, archive_schema: str) -> bool:
    return name.startswith("pg_") or name in reserved_schema_names(legacy_auth_schema, archive_schema)
