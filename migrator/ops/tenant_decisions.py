"""Which tenant schemas phase 1 registers: those created in the new layout are not legacy, those the
operator left out (--skip-schema) are registered as EXCLUDED, and ``tenant_*`` schemas whose names are not
valid tenant ids are renamed (--rename-schema), left out, or block the phase while they hold rows."""

from __future__ import annotations

from dataclasses import dataclass, field

from migrator import catalog
from migrator.core.context import MigrationContext
from migrator.core.errors import MigrationError
from migrator.django_migrations import legacy_registry_present
from migrator.ops import inspection
from salesflow.layout import is_reserved_schema, tenant_id_from_schema, tenant_schema_name
from tenants.models import MigrationState, Tenant


def created_new() -> set[str]:
    """Tenants created in the target layout: their schemas are not legacy."""
    if not catalog.table_exists("public", "tenants") or legacy_registry_present():  # --plan before the registry exists
        return set()
    return set(Tenant.objects.filter(migration_state=MigrationState.NEW).values_list("tenant_id", flat=True))


def created_new_schemas() -> list[str]:
    """The schemas of the tenants created in the target layout (state NEW), in order (the registry exists:
    a phase past phase 1 asks)."""
    return list(
        Tenant.objects.filter(migration_state=MigrationState.NEW)
        .order_by("tenant_id")
        .values_list("schema_name", flat=True)
    )


def excluded_tenants(tenant_ids: tuple[str, ...] | None = None) -> set[str]:
    """Registered tenants left out with --skip-schema (EXCLUDED), of ``tenant_ids`` if given."""
    if not catalog.table_exists("public", "tenants") or legacy_registry_present():
        return set()
    rows = Tenant.objects.filter(migration_state=MigrationState.EXCLUDED)
    if tenant_ids is not None:
        rows = rows.filter(tenant_id__in=tenant_ids)
    return set(rows.values_list("tenant_id", flat=True))


def register_excluded(tenant_id: str) -> None:
    """Record a tenant left out before it was registered: in the registry as EXCLUDED (so every later run
    leaves it out too), its legacy schema untouched."""
    if not Tenant.objects.filter(tenant_id=tenant_id).exists():
        tenant = Tenant(
            tenant_id=tenant_id, name=tenant_id.replace("_", " ").title(), migration_state=MigrationState.EXCLUDED
        )
        tenant.auto_create_schema = False
        tenant.save()


@dataclass
class InvalidSchemas:
    """The ``tenant_*`` schemas whose names are not valid tenant ids, and what the operator said about them."""

    excluded: list[dict[str, object]] = field(default_factory=list)  # {"schema", "rows", "reason"}
    renamed: dict[str, str] = field(default_factory=dict)  # old schema -> new tenant id (still to rename)
    blocking: dict[str, int] = field(default_factory=dict)  # schema -> rows: holds data, no decision given
    skipped_tenants: list[str] = field(default_factory=list)  # valid tenant ids left out by --skip-schema


def resolve_invalid_schemas(ctx: MigrationContext, invalid: list[str], valid: list[str]) -> InvalidSchemas:
    """Sort the invalid schemas into left out (operator's --skip-schema, or holding no rows), renamed
    (--rename-schema) and blocking (data nobody decided about: migrating without them would lose it);
    and the valid tenants the operator left out with --skip-schema.

    An option naming a schema that is neither an invalid ``tenant_*`` schema nor a tenant's is an
    error: a typo must not pass for a decision.
    """
    cfg = ctx.config
    candidates = [name for name in invalid if not is_reserved_schema(name, cfg.legacy_auth_schema, cfg.archive_schema)]
    skip = set(ctx.options.skip_schemas)
    renames = dict(ctx.options.rename_schemas)
    for name in [*skip, *renames]:
        if name in skip and name in renames:
            raise MigrationError(f"schema {name!r} is given both --skip-schema and --rename-schema; choose one")
    result = InvalidSchemas()
    for name in sorted(skip):
        tenant_id = tenant_id_from_schema(name)
        if tenant_id is not None and tenant_id in valid:
            result.skipped_tenants.append(tenant_id)
        elif name not in candidates:
            raise MigrationError(f"--skip-schema {name!r}: no tenant_* schema of that name in this database")
    for old, new in sorted(renames.items()):
        target = tenant_schema_name(new)
        if old in candidates:
            if catalog.schema_exists(target):
                raise MigrationError(f"--rename-schema {old}={new}: schema {target} already exists; choose another id")
            result.renamed[old] = new
        elif new not in valid:  # renamed by an earlier run, the schema is tenant_<new> now
            raise MigrationError(
                f"--rename-schema {old}={new}: no tenant_* schema {old!r} with an invalid tenant id in this database"
            )
    for name in [*candidates, *(tenant_schema_name(t) for t in result.skipped_tenants)]:
        if name in result.renamed:
            continue
        rows = inspection.rows_in_schema(name)
        if name in skip:
            result.excluded.append({"schema": name, "rows": rows, "reason": "--skip-schema"})
        elif rows == 0:
            result.excluded.append({"schema": name, "rows": 0, "reason": "no rows"})
        else:
            result.blocking[name] = rows
    return result
