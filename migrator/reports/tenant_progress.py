"""The tenant admin's progress columns: legacy rows as phase 1 counted them, rows migrated, last step (one
query for a page of tenants, from the tracking tables only)."""

from __future__ import annotations

from typing import Any

from django.db.models import BigIntegerField, F, JSONField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, JSONObject

from migrator.core.details import INSPECTION
from migrator.models import MigrationRecord, Status, of_steps
from migrator.phases.data import DataPhase
from migrator.phases.prepare import PreparePhase
from migrator.tables import TENANT_DATA_TABLES


def legacy_rows_expression() -> Any:
    """Rows of the tenant's legacy tables that phase 3 copies, as phase 1's inspection counted them.

    Only the copied tables (contacts, activities) are summed, so the number is directly comparable
    with the migrated rows; reference tables are merged into shared tables, not copied per tenant.
    """
    per_table = [
        Coalesce(Cast(KT(f"details__{INSPECTION}__tables__{spec.legacy_table}__rows"), BigIntegerField()), Value(0))
        for spec in TENANT_DATA_TABLES
    ]
    total: Any = per_table[0]
    for expression in per_table[1:]:
        total = total + expression
    return total


def with_migration_progress(tenants: QuerySet) -> QuerySet:
    """Annotate tenants with ``legacy_rows``, ``migrated_rows`` and ``last_step`` (one query in all).

    ``last_step`` is ``{"id", "migration_id", "phase", "step", "target", "status"}`` of the tenant's most
    recently started step (or, before any started, the most recently planned one).
    """
    registered = (
        MigrationRecord.objects.filter(
            of_steps(PreparePhase.REGISTER), tenant_id=OuterRef("tenant_id"), status=Status.COMPLETED
        )
        .order_by("-attempt")
        .annotate(rows=legacy_rows_expression())
        .values("rows")[:1]
    )
    copied = (
        MigrationRecord.objects.latest_attempts()
        .filter(of_steps(DataPhase.COPY_TABLE), tenant_id=OuterRef("tenant_id"))
        .order_by()
        .values("tenant_id")
        .annotate(total=Sum("rows_copied"))
        .values("total")
    )
    last = (
        MigrationRecord.objects.filter(tenant_id=OuterRef("tenant_id"))
        .order_by(F("started_at").desc(nulls_last=True), "-id")
        .annotate(
            summary=JSONObject(
                id="id", migration_id="migration_id", phase="phase", step="step", target="target", status="status"
            )
        )
        .values("summary")[:1]
    )
    return tenants.annotate(
        legacy_rows=Subquery(registered, output_field=BigIntegerField()),
        migrated_rows=Subquery(copied, output_field=BigIntegerField()),
        last_step=Subquery(last, output_field=JSONField()),
    )
