"""The drift report as phase 1 recorded it (``public.migrator_drift_findings``), grouped across tenants."""

from __future__ import annotations

from migrator.models import DriftFinding
from migrator.ops.drift import FindingGroup, group_findings

FIELDS = ("tenant_schema", "legacy_table", "kind", "object_name", "detail", "disposition", "action", "decided_by")
KEYS = ("schema", "table", "kind", "object", "detail", "disposition", "action", "decided_by")


def recorded_drift(schemas: list[str] | None = None) -> list[FindingGroup]:
    """Recorded findings (of ``schemas``, default all), identical ones of different tenants as one group."""
    rows = DriftFinding.objects.all()
    if schemas is not None:
        rows = rows.filter(tenant_schema__in=schemas)
    return group_findings(dict(zip(KEYS, row, strict=True)) for row in rows.values_list(*FIELDS).iterator())


def report_lines(groups: list[FindingGroup]) -> list[str]:
    """The report for a terminal: a heading, then a line per group (blocking ones first)."""
    if not groups:
        return ["Drift report: no finding recorded: every tenant inspected so far has the expected shape."]
    tenants = {schema for group in groups for schema in group.schemas}
    lines = [f"Drift report: {len(groups)} kinds of finding (e.g. in {', '.join(sorted(tenants)[:3])}):"]
    lines += [f"  {group.line()}" for group in groups]
    return lines
