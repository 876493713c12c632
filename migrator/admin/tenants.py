"""Admin for the tenant registry: state, progress counts from the tracking table, last step, domains.

Tenants are created and registered by the migrator (phase 1), never here: saving a new tenant
would create its schema and run its migrations inside the request, and the registry's
``migration_state`` is the migrator's to set. Name, active flag and domains stay editable for
users who have the change permission.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from migrator.admin.records import status_badge
from migrator.models import Status
from migrator.reports.tenant_progress import with_migration_progress
from tenants.models import Domain, MigrationState, Tenant

# Registry states shown with the colour of the record status they correspond to; every state a
# phase sets on the way (REGISTERED ... VERIFIED) is "under way".
STATE_STATUS: dict[str, str] = {
    MigrationState.NEW: Status.PENDING,
    MigrationState.LIVE: Status.COMPLETED,
    MigrationState.FAILED: Status.FAILED,
    MigrationState.ROLLED_BACK: Status.ROLLED_BACK,
}


def state_status(state: str) -> str:
    return STATE_STATUS.get(state, Status.RUNNING)


class DomainInline(admin.TabularInline):
    model = Domain
    extra = 0
    fields = ("domain", "is_primary")


def _records_url(tenant_id: str) -> str:
    return reverse("admin:migrator_migrationrecord_changelist") + "?" + urlencode({"tenant_id": tenant_id})


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    # What the list and the page show of a tenant's migration, from the tracking table.
    PROGRESS = ("state", "last_step_link", "legacy_rows_count", "migrated_rows_count")
    list_display = ("tenant_id", "schema_name", "name", "active", *PROGRESS, "domain_list")
    list_filter = ("migration_state", "active")
    search_fields = ("tenant_id", "name")
    search_help_text = "Matches the tenant id or name."
    list_per_page = 100
    show_full_result_count = False  # the paginator's count is enough; skip a second COUNT(*)
    inlines = [DomainInline]
    fields = ("tenant_id", "schema_name", "name", "active", *PROGRESS, "records", "created_at", "updated_at")
    # Name and active flag stay editable (and the domains inline).
    readonly_fields = tuple(f for f in fields if f not in ("name", "active"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        # Only what the form edits: a whole-row save would write back the migration state read when the
        # form was posted, over the one a phase committed meanwhile.
        edited = [name for name in form.changed_data if name not in self.readonly_fields]
        obj.save(update_fields=[*edited, "updated_at"] if edited else [])

    def has_delete_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        # Removing a registry row would orphan its schema and tracking history; the migrator's rollback owns that.
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # One query for the page: counts and last step come from the tracking table as subqueries,
        # domains in one prefetch.
        return with_migration_progress(super().get_queryset(request)).prefetch_related("domains")

    @admin.display(description="migration state", ordering="migration_state")
    def state(self, obj: Tenant) -> str:
        return status_badge(state_status(obj.migration_state), obj.get_migration_state_display())

    @admin.display(description="last step")
    def last_step_link(self, obj: Tenant) -> str:
        step = getattr(obj, "last_step", None)
        if not step:
            return "—"
        url = reverse("admin:migrator_migrationrecord_change", args=[step["id"]])
        # The tenant is the row already: phase and step are enough, the full key goes in the tooltip.
        return format_html(
            '<a href="{}" title="{}">{} {}</a> {}',
            url,
            step["migration_id"],
            step["phase"],
            step["step"],
            status_badge(step["status"]),
        )

    @admin.display(description="legacy rows", ordering="legacy_rows")
    def legacy_rows_count(self, obj: Tenant) -> str:
        value = getattr(obj, "legacy_rows", None)
        return "—" if value is None else f"{value:,}"

    @admin.display(description="migrated rows", ordering="migrated_rows")
    def migrated_rows_count(self, obj: Tenant) -> str:
        value = getattr(obj, "migrated_rows", None)
        return "—" if value is None else f"{value:,}"

    @admin.display(description="domains")
    def domain_list(self, obj: Tenant) -> str:
        domains = list(obj.domains.all())
        if not domains:
            return "—"
        return format_html_join(", ", "{}", ((d.domain,) for d in domains))

    @admin.display(description="migration records")
    def records(self, obj: Tenant) -> str:
        return format_html('<a href="{}">every step of {}</a>', _records_url(obj.tenant_id), obj.tenant_id)
