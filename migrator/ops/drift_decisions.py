"""Drift as phase 1 records it: what the operator's options decide, the findings of a tenant schema under
those decisions, their record (``DriftFinding``), the tables --rename-table renames, and the report
``--plan`` shows."""

from __future__ import annotations

from dataclasses import asdict, replace

from django.db import transaction

from migrator import catalog
from migrator.core.context import MigrationContext
from migrator.models import DriftFinding
from migrator.ops import drift, inspection
from migrator.ops.conversions import legacy_timezone
from migrator.ops.tenant_decisions import created_new
from salesflow.layout import tenant_schema_name


def drift_decisions(ctx: MigrationContext) -> drift.Decisions:
    """What the operator's options decide about drift."""
    return drift.Decisions(
        skip_schemas=frozenset(ctx.options.skip_schemas),
        rename_tables={(schema, old): new for schema, old, new in ctx.options.rename_tables},
        leave_tables=ctx.options.leave_tables,
        leave_constraints=ctx.options.leave_constraints,
        leave_dependents=ctx.options.leave_dependents,
        legacy_timezone=legacy_timezone(ctx.options),
    )


def drift_findings(ctx: MigrationContext, inspected: str, schema: str) -> list[drift.Finding]:
    """Findings of the schema ``inspected``, reported as ``schema``'s (they differ before a --rename-schema)."""
    decisions = drift_decisions(ctx)
    if inspected != schema:
        decisions = replace(
            decisions,
            rename_tables={
                (inspected, old): new for (where, old), new in decisions.rename_tables.items() if where == schema
            },
        )
    ((_, findings),) = list(drift.inspect_schemas([inspected], decisions))
    return [replace(f, schema=schema) for f in findings] if inspected != schema else findings


def record_findings(found: dict[str, list[drift.Finding]]) -> None:
    """Replace each tenant schema's recorded findings by these, in one transaction."""
    with transaction.atomic():
        DriftFinding.objects.filter(tenant_schema__in=list(found)).delete()
        DriftFinding.objects.bulk_create(finding_row(f) for findings in found.values() for f in findings)


# A finding's fields that the recorded row names otherwise; the others have the same name on both.
RECORDED_AS = {"schema": "tenant_schema", "table": "legacy_table"}


def finding_row(finding: drift.Finding) -> DriftFinding:
    return DriftFinding(**{RECORDED_AS.get(name, name): value for name, value in asdict(finding).items()})


def rename_decided_tables(ctx: MigrationContext, schema: str) -> dict[str, str]:
    """Rename the tables of ``schema`` that --rename-table maps to a legacy table (old name -> new name)."""
    done: dict[str, str] = {}
    for where, old, new in ctx.options.rename_tables:
        if where == schema and catalog.table_exists(schema, old) and not catalog.table_exists(schema, new):
            inspection.rename_table(schema, old, new)
            done[old] = new
    return done


def drift_report(ctx: MigrationContext) -> list[drift.FindingGroup]:
    """The drift of every tenant prepare would inspect, grouped across tenants (reads only: for --plan)."""
    valid, _invalid = inspection.discover_tenant_schemas(ctx.config.legacy_auth_schema, ctx.config.archive_schema)
    new = created_new()
    valid = [t for t in valid if t not in new]
    if ctx.tenant_filter:
        valid = [t for t in valid if t in ctx.tenant_filter]
    schemas = [tenant_schema_name(t) for t in valid]
    findings = (f.as_dict() for _schema, found in drift.inspect_schemas(schemas, drift_decisions(ctx)) for f in found)
    return drift.group_findings(findings)
