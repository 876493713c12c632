"""Undoing what the migration created (rollback without --restore): its tables, schemas and roles.

Legacy tables are never touched here.
"""

from __future__ import annotations

from django.apps import apps
from django.db import DatabaseError, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.config import MigratorConfig
from migrator.core.details import TenantGrantsDetails, read_details
from migrator.core.errors import MigrationError
from migrator.models import MigrationRecord, Status
from migrator.ops import grants
from migrator.step_ref import StepRef
from migrator.tables import LEGACY_TABLES, TENANT_DATA_TABLES, service_tables


def migrated_apps() -> list[str]:
    """The apps whose tables the migration created (their rows in public.django_migrations go too)."""
    return sorted({str(apps.get_model(t.model)._meta.app_label) for t in LEGACY_TABLES})


def drop_tenant_tables(schema: str, tenant_id: str | None = None) -> list[str]:
    """Drop the namespaced tables (and the schema's django_migrations) a migration made in a legacy schema.

    ``tenant_id``'s reference map rows go too: its legacy reference rows may change before it is
    migrated again, and a kept map would remap its rows by the old ones.
    """
    dropped = []
    with transaction.atomic():
        for table in [*reversed([t.table for t in TENANT_DATA_TABLES]), "django_migrations"]:
            if catalog.table_exists(schema, table):
                db.execute(sql.SQL("DROP TABLE {} CASCADE").format(sql.Identifier(schema, table)))
                dropped.append(table)
        db.execute("DELETE FROM public.migrator_deferred_constraints WHERE schema_name = %s", [schema])
        if tenant_id is not None:
            db.execute("DELETE FROM public.migrator_reference_map WHERE tenant_id = %s", [tenant_id])
    return dropped


def drop_service_schemas() -> list[str]:
    dropped = []
    with transaction.atomic():
        for schema in service_tables():
            if catalog.schema_exists(schema):
                db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                dropped.append(schema)
        db.execute("DELETE FROM public.django_migrations WHERE app = ANY(%s)", [migrated_apps()])
        db.execute("DELETE FROM public.migrator_reference_map")
    return dropped


def drop_service_roles(config: MigratorConfig, role_step: StepRef, grants_step: StepRef) -> tuple[list[str], list[str]]:
    """Revoke what phase 4 granted the service roles; drop the ones it created. Returns (dropped, kept).

    Phase 4's records say which: those of ``role_step`` (a role it created) and ``grants_step`` (the usage
    it granted on a tenant schema). A role phase 4 adopted (``--adopt-roles``) or that someone else made is
    never dropped, and nothing it owns is touched.
    """
    roles = [role for role in config.service_roles.values() if catalog.role_exists(role)]
    created = grants.roles_created_by_migrator(roles, role_step)
    usage_granted = tenant_usage_granted(grants_step)
    dropped: list[str] = []
    kept: list[str] = []
    for role in roles:
        ours = role in created
        with transaction.atomic():
            grants.revoke_granted_privileges(
                role, catalog.schemas_like_tenants() if ours else usage_granted.get(role, [])
            )
            if ours:
                drop_role(role)
        (dropped if ours else kept).append(role)
    return dropped, kept


def revoke_tenant_usage(schema: str, grants_step: StepRef) -> list[str]:
    """Take back the USAGE on ``schema`` that phase 4 granted (its ``grants_step`` records say which; roles
    that had it before keep it)."""
    roles = [
        role
        for role, schemas in tenant_usage_granted(grants_step).items()
        if schema in schemas and catalog.role_exists(role)
    ]
    for role in roles:
        db.execute(sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(sql.Identifier(schema), sql.Identifier(role)))
    return roles


def tenant_usage_granted(grants_step: StepRef) -> dict[str, list[str]]:
    """role -> tenant schemas where phase 4 granted USAGE (the role did not have it before), by the records
    of its ``grants_step``."""
    usage: dict[str, list[str]] = {}
    rows = MigrationRecord.objects.of(grants_step).exclude(status=Status.ROLLED_BACK).values_list("target", "details")
    for schema, details in rows:
        for role in read_details(TenantGrantsDetails, details).get("usage_granted", []):
            usage.setdefault(role, []).append(schema)
    return usage


def drop_role(role: str) -> None:
    try:
        with transaction.atomic():
            db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    except DatabaseError as exc:
        cause = exc.__cause__
        detail = getattr(getattr(cause, "diag", None), "message_detail", None) or str(exc).strip()
        raise MigrationError(
            f"role {role} cannot be dropped, something not granted by the migrator still depends on it "
            f"({' '.join(detail.split())}): revoke or reassign that, then rerun the rollback"
        ) from None
