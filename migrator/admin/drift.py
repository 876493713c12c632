"""Admin for phase 1's drift report: each finding of each tenant, read-only, filterable by kind and disposition.

Findings are evidence of what phase 1 found, so the admin never adds, changes or deletes them.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from migrator.admin.records import status_badge
from migrator.models import Disposition, DriftFinding

# Badge colours by meaning: red refuses the tenant, amber waits for the operator, green is taken care of.
DISPOSITION_BADGE = {
    Disposition.REFUSED: "FAILED",
    Disposition.DECISION: "ROLLED_BACK",
    Disposition.DECIDED: "RUNNING",
    Disposition.CARRIED: "COMPLETED",
}


@admin.register(DriftFinding)
class DriftFindingAdmin(admin.ModelAdmin):
    list_display = ("tenant_schema", "legacy_table", "object_name", "kind", "disposition_badge", "detail", "action")
    list_filter = ("disposition", "kind", "legacy_table")
    search_fields = ("tenant_schema", "legacy_table", "object_name", "detail")
    list_per_page = 100
    readonly_fields = (
        "tenant_schema",
        "legacy_table",
        "kind",
        "object_name",
        "detail",
        "disposition",
        "action",
        "decided_by",
        "inspected_at",
    )

    @admin.display(description="disposition", ordering="disposition")
    def disposition_badge(self, obj: DriftFinding) -> str:
        return status_badge(DISPOSITION_BADGE[Disposition(obj.disposition)], obj.get_disposition_display())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DriftFinding | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DriftFinding | None = None) -> bool:
        return False
