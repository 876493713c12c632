"""Admin for the tracking table: read-only migration records and the operator dashboard.

Migration records are evidence of what the migrator did, so the admin never adds, changes or
deletes them; the dashboard is a view of this admin (``get_urls``) so it shares its permission:
view permission on migration records.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.dateformat import format as format_date
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.timezone import localtime
from django.views.decorators.http import require_GET

from migrator import phases as phase_registry
from migrator.core.details import RowDetails, read_details
from migrator.core.fingerprint import Fingerprint
from migrator.models import MigrationRecord, Status
from migrator.reports.checks import format_duration
from migrator.reports.dashboard import Dashboard, build_dashboard

STATUS_COLOURS: dict[str, str] = {
    Status.PENDING: "#757575",
    Status.RUNNING: "#1565c0",
    Status.COMPLETED: "#2e7d32",
    Status.FAILED: "#c62828",
    Status.ROLLED_BACK: "#ef6c00",
}


def timestamp(value: datetime | None) -> str:
    """Seconds matter when reading a migration's history; the admin's default date format drops them."""
    return format_date(localtime(value), "Y-m-d H:i:s") if value else "—"


def status_badge(status: str, label: str | None = None, title: str = "") -> str:
    """A coloured label: the colour carries the meaning at a glance, the text keeps it readable without colour."""
    return format_html(
        '<span class="sf-status sf-status-{}" title="{}" style="background:{};color:#fff;padding:1px 6px;'
        'border-radius:3px;font-weight:600;white-space:nowrap">{}</span>',
        status.lower(),
        title,
        STATUS_COLOURS.get(status, "#757575"),
        label or status,
    )


class PhaseFilter(admin.SimpleListFilter):
    """Phases in plan order from the registry (no query, unlike a distinct over the table)."""

    title = "phase"
    parameter_name = "phase"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        ordered = sorted(phase_registry.PHASES, key=lambda p: (p.number is None, p.number or 0, p.name))
        return [(p.name, f"{p.number} {p.name}" if p.number else p.name) for p in ordered]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(phase=self.value()) if self.value() else queryset


class TenantFilter(admin.SimpleListFilter):
    """Registered tenants plus the phase-wide steps (no tenant)."""

    title = "tenant"
    parameter_name = "tenant_id"
    PHASE_WIDE = "-"

    # Beyond this many tenants the sidebar lists none (a link each made the page megabytes at 10,000):
    # the tenant's own page links to its records, and the list's search matches tenant ids.
    LISTED_AT_MOST = 200

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        from tenants.models import Tenant

        tenants = list(
            Tenant.objects.order_by("tenant_id").values_list("tenant_id", flat=True)[: self.LISTED_AT_MOST + 1]
        )
        if len(tenants) > self.LISTED_AT_MOST:
            chosen = self.value()
            tenants = [chosen] if chosen and chosen != self.PHASE_WIDE else []
        return [(self.PHASE_WIDE, "(phase-wide steps)"), *((t, t) for t in tenants)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == self.PHASE_WIDE:
            return queryset.filter(tenant_id__isnull=True)
        return queryset.filter(tenant_id=self.value()) if self.value() else queryset


@admin.register(MigrationRecord)
class MigrationRecordAdmin(admin.ModelAdmin):
    list_display = (
        "key",
        "phase_label",
        "tenant",
        "step",
        "status_label",
        "attempt",
        "started",
        "duration_label",
        "rows",
        "fingerprint_match",
    )
    list_display_links = ("key",)
    list_filter = ("status", PhaseFilter, TenantFilter)
    search_fields = ("migration_id", "tenant_id", "target", "error_message")
    search_help_text = "Matches the migration id, tenant, target table or error text."
    date_hierarchy = "started_at"
    list_per_page = 100
    # A second COUNT(*) over the whole table on every filtered page buys little for an operator.
    show_full_result_count = False
    # The record page's groups of fields; every field shown is read-only (records are history).
    field_groups: tuple[tuple[str, tuple[str, ...]], ...] = (
        (
            "Step",
            (
                "migration_id",
                "description",
                "phase",
                "phase_number",
                "tenant_id",
                "step",
                "target",
                "attempt",
                "status_label",
                "other_attempts",
            ),
        ),
        (
            "Outcome",
            (
                "error_text",
                "message",
                "started",
                "completed",
                "duration_label",
            ),
        ),
        (
            "Rows and fingerprints",
            (
                "rows_expected",
                "rows_copied",
                "checkpoint",
                "source_fingerprint",
                "target_fingerprint",
                "fingerprint_match",
            ),
        ),
        (
            "Run",
            (
                "host",
                "pid",
                "details_json",
            ),
        ),
    )
    fieldsets = tuple((title, {"fields": names}) for title, names in field_groups)
    readonly_fields = tuple(name for _title, names in field_groups for name in names)

    # --- read-only: records are the migration's history ---

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: MigrationRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: MigrationRecord | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        qs = super().get_queryset(request)
        # The list never shows the JSON details, which can be large (inspection reports, differing keys).
        match = request.resolver_match
        return qs.defer("details") if match and match.url_name == "migrator_migrationrecord_changelist" else qs

    # --- columns ---

    @admin.display(description="migration id", ordering="migration_id")
    def key(self, obj: MigrationRecord) -> str:
        # Break long keys after their slashes, not in the middle of a table name.
        return format_html_join(mark_safe("/<wbr>"), "{}", ((part,) for part in obj.migration_id.split("/")))

    @admin.display(description="phase", ordering="phase_number")
    def phase_label(self, obj: MigrationRecord) -> str:
        return f"{obj.phase_number} {obj.phase}" if obj.phase_number else obj.phase

    @admin.display(description="tenant", ordering="tenant_id")
    def tenant(self, obj: MigrationRecord) -> str:
        if not obj.tenant_id:
            return "—"
        url = reverse("admin:migrator_migrationrecord_changelist") + "?" + urlencode({"tenant_id": obj.tenant_id})
        return format_html('<a href="{}" title="records of this tenant">{}</a>', url, obj.tenant_id)

    @admin.display(description="status", ordering="status")
    def status_label(self, obj: MigrationRecord) -> str:
        # The list has no room for error text: it is the badge's tooltip here, in full on the record's page.
        return status_badge(obj.status, title=Truncator(obj.error_message or "").chars(300))

    @admin.display(description="started", ordering="started_at")
    def started(self, obj: MigrationRecord) -> str:
        return timestamp(obj.started_at)

    @admin.display(description="completed", ordering="completed_at")
    def completed(self, obj: MigrationRecord) -> str:
        return timestamp(obj.completed_at)

    @admin.display(description="duration", ordering="duration")
    def duration_label(self, obj: MigrationRecord) -> str:
        return format_duration(obj.duration)

    @admin.display(description="rows (copied / expected)", ordering="rows_copied")
    def rows(self, obj: MigrationRecord) -> str:
        if obj.rows_copied is None and obj.rows_expected is None:
            return "—"
        copied = "—" if obj.rows_copied is None else f"{obj.rows_copied:,}"
        expected = "—" if obj.rows_expected is None else f"{obj.rows_expected:,}"
        return f"{copied} / {expected}"

    @admin.display(description="fingerprints match", boolean=True)
    def fingerprint_match(self, obj: MigrationRecord) -> bool | None:
        source = Fingerprint.parse_recorded(obj.source_fingerprint)
        target = Fingerprint.parse_recorded(obj.target_fingerprint)
        return None if source is None or target is None else source == target

    # --- detail page ---

    @admin.display(description="error")
    def error_text(self, obj: MigrationRecord) -> str:
        if not obj.error_message:
            return "—"
        # pre-wrap: the whole message, line breaks kept, long SQL or key lists wrapped instead of cut.
        return format_html(
            '<pre class="sf-error" style="white-space:pre-wrap;word-break:break-word;margin:0;color:#c62828">{}</pre>',
            obj.error_message,
        )

    @admin.display(description="message")
    def message(self, obj: MigrationRecord) -> str:
        return read_details(RowDetails, obj.details).get("message", "") or "—"

    @admin.display(description="details")
    def details_json(self, obj: MigrationRecord) -> str:
        if not obj.details:
            return "—"
        return format_html(
            '<pre style="white-space:pre-wrap;word-break:break-word;margin:0">{}</pre>',
            json.dumps(obj.details, indent=2, sort_keys=True, default=str),
        )

    @admin.display(description="all attempts")
    def other_attempts(self, obj: MigrationRecord) -> str:
        url = reverse("admin:migrator_migrationrecord_changelist") + "?" + urlencode({"migration_id": obj.migration_id})
        return format_html('<a href="{}">every attempt of this step</a>', url)

    # --- dashboard ---

    def get_urls(self) -> list[URLPattern]:
        dashboard = path(
            "dashboard/", self.admin_site.admin_view(self.dashboard_view), name="migrator_migrationrecord_dashboard"
        )
        progress = path(
            "dashboard/progress/",
            self.admin_site.admin_view(require_GET(self.dashboard_progress_view)),
            name="migrator_migrationrecord_dashboard_progress",
        )
        return [dashboard, progress, *super().get_urls()]

    def dashboard_progress_view(self, request: HttpRequest) -> JsonResponse:
        """The dashboard's changing numbers as JSON, for the open page to refresh itself while a phase runs."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return JsonResponse(dashboard_progress(build_dashboard()))

    def dashboard_view(self, request: HttpRequest) -> TemplateResponse:
        # admin_view already sent anonymous and non-staff users to the login page.
        if not self.has_view_permission(request):
            raise PermissionDenied
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": "Migration dashboard",
            "opts": self.opts,
            "dashboard": build_dashboard(),
            "progress_url": reverse("admin:migrator_migrationrecord_dashboard_progress"),
            "refresh_seconds": settings.SALESFLOW["DASHBOARD_REFRESH_SECONDS"],
            "changelist_url": reverse("admin:migrator_migrationrecord_changelist"),
            "failed_url": reverse("admin:migrator_migrationrecord_changelist")
            + "?"
            + urlencode({"status__exact": Status.FAILED}),
        }
        return TemplateResponse(request, "admin/migrator/dashboard.html", context)


def dashboard_progress(dashboard: Dashboard) -> dict[str, Any]:
    """What the dashboard page updates in place: phases' tenant counts and states, the steps running now,
    the failure count and the row totals. ``running`` false: nothing runs, the page stops asking."""
    current = dashboard.current_phase
    return {
        "generated_at": dashboard.generated_at.isoformat(),
        "generated_at_text": format_date(localtime(dashboard.generated_at), "Y-m-d H:i:s T"),
        "running": bool(dashboard.running),
        "tenants": dashboard.tenants,
        "current_phase": {"number": current.number, "name": current.name, "state": current.state} if current else None,
        "failures_total": dashboard.failures_total,
        "phases": [
            {
                "name": phase.name,
                "state": phase.state,
                "tenants": phase.tenants,
                "done": phase.done,
                "running": phase.running,
                "failed": phase.failed,
                "pending": phase.pending,
                "rolled_back": phase.rolled_back,
                "percent_done": round(phase.percent_done),
                "bar": [
                    {"state": state, "count": count, "percent": round(percent, 3)}
                    for state, count, percent in phase.bar
                ],
            }
            for phase in dashboard.phases
        ],
        "running_steps": [
            {
                "migration_id": record.migration_id,
                "url": reverse("admin:migrator_migrationrecord_change", args=[record.pk]),
                "tenant_id": record.tenant_id,
                "started_at": timestamp(record.started_at),
                "rows_copied": record.rows_copied,
                "rows_expected": record.rows_expected,
                "host": record.host,
                "pid": record.pid,
            }
            for record in dashboard.running
        ],
        "ranged_tables": [table.as_dict() for table in dashboard.ranged],
        "totals": {
            "legacy_rows": dashboard.totals.legacy_rows,
            "rows_moved": dashboard.totals.rows_moved,
            "tenant_rows_moved": dashboard.totals.tenant_rows_moved,
            "rows_validated": dashboard.totals.rows_validated,
            "validations": f"{dashboard.totals.validations_passed} / {dashboard.totals.validations_failed}",
        },
    }
