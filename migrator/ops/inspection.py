"""What the legacy layout really contains: schemas, tables, row counts, columns with no target."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from migrator import catalog, db
from migrator.core.details import InspectDetails, read_details
from migrator.core.errors import MigrationError
from migrator.models import MigrationRecord, Status
from migrator.step_ref import StepRef
from migrator.tables import (
    AUTH_MODELS,
    LEGACY_AUTH_TABLES,
    LEGACY_TENANT_TABLES,
    legacy_tenant_model,
    model_columns,
    unmapped_columns,
)
from salesflow.layout import is_reserved_schema, tenant_id_from_schema


def discover_tenant_schemas(legacy_auth_schema: str, archive_schema: str) -> tuple[list[str], list[str]]:
    """Tenant ids of valid ``tenant_<id>`` schemas, and the names of ``tenant_*`` schemas that are not valid."""
    valid, invalid = [], []
    for schema in catalog.schemas_like_tenants():
        tenant_id = tenant_id_from_schema(schema)
        if tenant_id is None or is_reserved_schema(schema, legacy_auth_schema, archive_schema):
            invalid.append(schema)
        else:
            valid.append(tenant_id)
    return valid, invalid


def rows_in_schema(schema: str) -> int:
    """Rows in every table of ``schema`` (exact counts: what would be left behind if it were skipped).

    Each table's own rows: a partitioned table's are its partitions', counted as tables of their own."""
    tables = catalog.tables_by_schema([schema])[schema]
    return sum(
        catalog.row_count(schema, table) for table in sorted(tables) if not catalog.is_partitioned(schema, table)
    )


def rename_schema(old: str, new: str) -> None:
    db.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


def rename_table(schema: str, old: str, new: str) -> None:
    db.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, old), sql.Identifier(new)))


def _inspect_tables(schema: str, tables: tuple[str, ...], model_for: dict[str, str]) -> dict[str, Any]:
    present = catalog.tables_by_schema([schema])[schema]
    report: dict[str, Any] = {"schema": schema, "tables": {}, "missing": [], "unmapped": {}}
    for table in tables:
        if table not in present:
            report["missing"].append(table)
            continue
        cols = [c.name for c in catalog.columns(schema, table)]
        extra = unmapped_columns(cols, model_columns(model_for[table]))  # no target tables yet
        report["tables"][table] = {"rows": catalog.row_count(schema, table), "columns": len(cols)}
        if extra:
            report["unmapped"][table] = extra
    return report


def inspect_tenant_schema(schema: str) -> dict[str, Any]:
    return _inspect_tables(schema, LEGACY_TENANT_TABLES, {t: legacy_tenant_model(t) for t in LEGACY_TENANT_TABLES})


def inspect_auth_schema(schema: str) -> dict[str, Any]:
    if not catalog.schema_exists(schema):
        return {"schema": schema, "tables": {}, "missing": list(LEGACY_AUTH_TABLES), "unmapped": {}, "absent": True}
    return _inspect_tables(schema, LEGACY_AUTH_TABLES, AUTH_MODELS)


def describe_report(report: dict[str, Any]) -> str:
    """One line for the operator: rows per table, then what is missing or has no target column."""
    parts = [f"{table} {info['rows']}" for table, info in report["tables"].items()]
    line = ", ".join(parts) or "no legacy tables"
    if report["missing"]:
        line += f"; missing: {', '.join(report['missing'])}"
    for table, cols in report["unmapped"].items():
        line += f"; {table} has columns with no target: {', '.join(cols)} (phase 3 will refuse)"
    return line


def rows_counted_at_registration(register: StepRef, tenant_id: str, table: str) -> int | None:
    """Rows phase 1's inspection counted in the tenant's legacy ``table`` (``register``: the step that
    recorded it); None when it found no such table or has not run for the tenant."""
    details = (
        MigrationRecord.objects.of(register)
        .filter(tenant_id=tenant_id, status=Status.COMPLETED)
        .order_by("-attempt")
        .values_list("details", flat=True)
        .first()
    )
    tables = (read_details(InspectDetails, details).get("inspection") or {}).get("tables") or {}
    rows = (tables.get(table) or {}).get("rows")
    return int(rows) if rows is not None else None


def refuse_a_table_gone_since_registration(register: StepRef, schema: str, tenant_id: str, table: str) -> None:
    """The tenant has no legacy ``table`` now: refused if phase 1 counted rows in it, which would otherwise
    be left behind without a word (nothing to copy, nothing to compare)."""
    counted = rows_counted_at_registration(register, tenant_id, table)
    if counted:
        raise MigrationError(
            f"legacy table {schema}.{table} is gone, but phase 1 counted {counted} rows in it: put it back "
            f"(the phase-1 backup holds it), or leave the tenant out with --skip-schema {schema}"
        )
