"""The operator dashboard, read from the tracking tables only (the tenant admin's progress columns are in
:mod:`migrator.reports.tenant_progress`, the last rehearsal and load test in :mod:`migrator.reports.checks`).

Everything here is a handful of aggregate queries over ``public.schema_migrations`` and
``public.tenants``: no tenant table is counted in a web request (phase 1 and phase 3 already
recorded the counts), so the page costs the same for 3 tenants or 1,000.

"Latest attempt" is the row with the highest ``attempt`` of its ``migration_id``: a retry is a new
row, so older attempts are history and must not count twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, F, Max, Min, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from migrator import phases as phase_registry
from migrator.core.details import BackupDetails, read_details
from migrator.core.phase import Phase
from migrator.engine import tracking
from migrator.models import MigrationRecord, Status, of_steps
from migrator.ops.capture import Lag, lag
from migrator.phases.data import DataPhase
from migrator.phases.prepare import PreparePhase
from migrator.reports.checks import (
    LoadTestSummary,
    RehearsalSummary,
    RehearsedPhase,
    format_duration,
    latest_rehearsal_and_load_test,
)

# one definition of each, shared with `status`
from migrator.reports.status import (
    RangedTable,
    cell_state,
    deploy_failures,
    excluded_schemas,
    ranged_tables_in_progress,
    registered_schemas_missing,
)
from migrator.reports.tenant_progress import legacy_rows_expression
from salesflow.layout import tenant_id_from_schema

FAILURES_SHOWN = 50
RUNNING_SHOWN = 20
# Schemas a deploy cannot migrate listed on the page (a database with thousands of them stays one page).
PROBLEMS_SHOWN = 50


def latest_attempts() -> QuerySet[MigrationRecord]:
    return MigrationRecord.objects.latest_attempts()


# --- dashboard -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseProgress:
    number: int
    name: str
    summary: str
    estimate: str
    tenants: int
    done: int = 0
    running: int = 0
    failed: int = 0
    rolled_back: int = 0
    phase_wide: str | None = None  # state of the steps that belong to no tenant; None: the phase has none (yet)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    remaining: timedelta | None = None
    weighted_by_rows: bool = False

    @property
    def pending(self) -> int:
        return max(self.tenants - self.done - self.running - self.failed - self.rolled_back, 0)

    @property
    def measured(self) -> timedelta | None:
        """First ``started_at`` to last ``completed_at`` of the phase's rows (all attempts)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(self.finished_at - self.started_at, timedelta(0))

    @property
    def state(self) -> str:
        if self.failed or self.phase_wide == "failed":
            return "failed"
        if self.running or self.phase_wide == "running":
            return "running"
        tenants_done = self.done == self.tenants
        if tenants_done and (self.phase_wide == "done" or (self.phase_wide is None and self.tenants)):
            return "done"
        if self.started_at is None and not (self.done or self.rolled_back):
            return "pending"
        if self.rolled_back and not self.done and self.phase_wide in (None, "rolled back"):
            return "rolled back"
        return "incomplete"

    @property
    def bar(self) -> list[tuple[str, int, float]]:
        """(state, count, percent) segments of the progress bar, over tenants."""
        if not self.tenants:
            return [(self.phase_wide or "pending", 0, 100.0)]
        parts = [
            ("done", self.done),
            ("running", self.running),
            ("failed", self.failed),
            ("rolled back", self.rolled_back),
            ("pending", self.pending),
        ]
        return [(state, count, 100.0 * count / self.tenants) for state, count in parts if count]

    @property
    def percent_done(self) -> float:
        return 100.0 * self.done / self.tenants if self.tenants else (100.0 if self.phase_wide == "done" else 0.0)

    @property
    def projected_total(self) -> timedelta | None:
        if self.measured is None or self.remaining is None:
            return None
        return self.measured + self.remaining

    # Formatted for the template (Django templates cannot call a function with an argument).
    @property
    def measured_text(self) -> str:
        return format_duration(self.measured)

    @property
    def remaining_text(self) -> str:
        return format_duration(self.remaining)

    @property
    def projected_total_text(self) -> str:
        return format_duration(self.projected_total)


@dataclass(frozen=True)
class RowTotals:
    legacy_rows: int = 0  # rows in the tenants' copied legacy tables, counted by phase 1
    rows_moved: int = 0  # rows copied by the latest attempts of the copy steps (auth and tenant tables)
    tenant_rows_moved: int = 0
    rows_validated: int = 0  # target rows of validations that passed (counts and fingerprints equal)
    validations_passed: int = 0
    validations_failed: int = 0


@dataclass(frozen=True)
class BackupSummary:
    record_id: int
    path: str
    size: int
    sha256: str
    toc_entries: int | None
    server_major: int | None
    created_at: datetime | None


@dataclass(frozen=True)
class OnlineLag:
    """One captured schema's lag: what `sync` has still to apply."""

    scope: str
    tenant_id: str | None  # None: the legacy auth schema
    pending: int
    oldest_seconds: float | None

    @property
    def oldest_text(self) -> str:
        return "—" if self.oldest_seconds is None else format_duration(timedelta(seconds=self.oldest_seconds))


def _online_lag(found: list[Lag]) -> list[OnlineLag]:
    """Largest lag first: the tenant that holds up the cutover is the one to look at."""
    rows = [
        OnlineLag(
            x.scope,
            tenant_id_from_schema(x.scope),
            x.pending,
            x.oldest_seconds,
        )
        for x in found
    ]
    return sorted(rows, key=lambda x: (-x.pending, x.scope))


@dataclass(frozen=True)
class Dashboard:
    generated_at: datetime
    tenants: int
    phases: list[PhaseProgress]
    totals: RowTotals
    backup: BackupSummary | None
    failures: list[MigrationRecord] = field(default_factory=list)
    failures_total: int = 0
    running: list[MigrationRecord] = field(default_factory=list)
    excluded: list[dict[str, object]] = field(default_factory=list)  # schemas phase 1 left out, with rows
    rehearsal: RehearsalSummary | None = None
    load_test: LoadTestSummary | None = None
    # online migration: per captured schema, changes captured and not applied yet (empty: capture off)
    lag: list[OnlineLag] = field(default_factory=list)
    missing_schemas: list[str] = field(default_factory=list)  # registered tenants whose schema is gone
    deploy_failures: dict[str, str] = field(default_factory=dict)  # {schema: reason} of the last migrate_schemas
    # large tables of phase 3 whose key ranges are not all done, each range's rows done / planned
    ranged: list[RangedTable] = field(default_factory=list)

    @property
    def deploy_problems(self) -> list[tuple[str, str]]:
        """(schema, problem) of the first :data:`PROBLEMS_SHOWN` schemas a deploy cannot migrate."""
        found = [(schema, "registered tenant, schema missing") for schema in self.missing_schemas[:PROBLEMS_SHOWN]]
        found += [
            (schema, f"last migrate_schemas: {reason}")
            for schema, reason in list(self.deploy_failures.items())[: PROBLEMS_SHOWN - len(found)]
        ]
        return found

    @property
    def deploy_problems_not_shown(self) -> int:
        return len(self.missing_schemas) + len(self.deploy_failures) - len(self.deploy_problems)

    @property
    def timeline(self) -> list[tuple[PhaseProgress, RehearsedPhase | None]]:
        """Each phase beside its latest rehearsal (None: not rehearsed)."""
        rehearsed = self.rehearsal.phases if self.rehearsal else {}
        return [(phase, rehearsed.get(phase.name)) for phase in self.phases]

    @property
    def current_phase(self) -> PhaseProgress | None:
        """The first phase that is not done: where the operator's attention goes."""
        return next((p for p in self.phases if p.state != "done"), None)


def _project(measured: timedelta | None, weights: dict[str, int], done: set[str], finished: bool) -> timedelta | None:
    """Time left at the rate measured so far: measured x (work left / work done)."""
    if finished:
        return timedelta(0)
    if measured is None or not measured:
        return None
    done_weight = sum(weights[t] for t in done)
    left_weight = sum(weights.values()) - done_weight
    if done_weight <= 0:
        return None
    return measured * (left_weight / done_weight)


def _phase_cells(names: list[str], tenant_ids: set[str]) -> dict[str, tuple[dict[str, str], str | None]]:
    """phase -> ({tenant: cell state}, phase-wide cell state or None), from the latest attempts."""
    # One row per phase and tenant, aggregated by the server (the status command's query).
    statuses = tracking.latest_statuses(names)
    cells: dict[str, tuple[dict[str, str], str | None]] = {name: ({}, None) for name in names}
    for (phase, tenant_id), found in statuses.items():
        per_tenant, _phase_wide = cells[phase]
        if tenant_id is None:
            cells[phase] = (per_tenant, cell_state(found))
        elif tenant_id in tenant_ids:  # steps of tenants no longer registered are history, not progress
            per_tenant[tenant_id] = cell_state(found)
    return cells


def _backup() -> BackupSummary | None:
    record = MigrationRecord.objects.only("id", "details", "completed_at").latest_backup(PreparePhase.BACKUP)
    details = read_details(BackupDetails, record.details if record else None)
    if record is None or not isinstance(details.get("backup"), dict):
        return None
    info = details["backup"]
    created = info.get("created_at")
    try:
        created_at = datetime.fromisoformat(created) if created else record.completed_at
    except (TypeError, ValueError):
        created_at = record.completed_at
    return BackupSummary(
        record_id=record.pk,
        path=str(info.get("path", "")),
        size=int(info.get("size") or 0),
        sha256=str(info.get("sha256", "")),
        toc_entries=info.get("toc_entries"),
        server_major=info.get("server_major"),
        created_at=created_at,
    )


def _totals(legacy_rows: int) -> RowTotals:
    latest = latest_attempts()
    # Reference merges are counted by the shared rows they produce, which are not "moved" one to one: only
    # the steps that move rows (StepKind.moves_rows) count as rows moved into the target layout.
    moved = of_steps(*phase_registry.steps_moving_rows())
    validated = of_steps(DataPhase.VALIDATE)
    copied = latest.aggregate(
        rows_moved=Coalesce(Sum("rows_copied", filter=moved), 0),
        tenant_rows_moved=Coalesce(Sum("rows_copied", filter=of_steps(DataPhase.COPY_TABLE)), 0),
        rows_validated=Coalesce(Sum("rows_copied", filter=validated & Q(status=Status.COMPLETED)), 0),
        validations_passed=Count("id", filter=validated & Q(status=Status.COMPLETED)),
        validations_failed=Count("id", filter=validated & Q(status=Status.FAILED)),
    )
    return RowTotals(legacy_rows=legacy_rows, **copied)


def _legacy_rows_by_tenant() -> dict[str, int]:
    rows = (
        latest_attempts()
        .filter(of_steps(PreparePhase.REGISTER), status=Status.COMPLETED)
        .annotate(rows=legacy_rows_expression())
        .values_list("tenant_id", "rows")
    )
    return {str(tenant_id): int(count or 0) for tenant_id, count in rows}


def build_dashboard(now: datetime | None = None) -> Dashboard:
    """Every number of the dashboard page, in a fixed number of queries (ten, and the online lag's one or two:
    whether capture is on, and one aggregate over the capture table, which `sync` keeps short)."""
    from tenants.models import Tenant

    ordered = phase_registry.ORDERED
    names = [phase.name for phase in ordered]
    tenant_ids = set(Tenant.objects.values_list("tenant_id", flat=True))
    cells = _phase_cells(names, tenant_ids)
    timing: dict[str, dict[str, Any]] = {
        row["phase"]: dict(row)
        for row in MigrationRecord.objects.filter(phase__in=names)
        .order_by()
        .values("phase")
        .annotate(first=Min("started_at"), last=Max("completed_at"))
    }
    legacy_rows = {t: rows for t, rows in _legacy_rows_by_tenant().items() if t in tenant_ids}
    phases = [
        _phase_progress(phase, cells[phase.name], tenant_ids, timing.get(phase.name, {}), legacy_rows)
        for phase in ordered
    ]

    failed = latest_attempts().filter(status=Status.FAILED).order_by(F("completed_at").desc(nulls_last=True), "-id")
    failures = list(failed.defer("details")[: FAILURES_SHOWN + 1])
    failures_total = len(failures) if len(failures) <= FAILURES_SHOWN else failed.count()
    running = list(
        latest_attempts().filter(status=Status.RUNNING).order_by("started_at").defer("details")[:RUNNING_SHOWN]
    )
    rehearsal, load_test = latest_rehearsal_and_load_test()
    return Dashboard(
        generated_at=now or timezone.now(),
        tenants=len(tenant_ids),
        phases=phases,
        totals=_totals(sum(legacy_rows.values())),
        backup=_backup(),
        failures=failures[:FAILURES_SHOWN],
        failures_total=failures_total,
        running=running,
        excluded=excluded_schemas(),
        missing_schemas=registered_schemas_missing(),
        deploy_failures=deploy_failures(),
        rehearsal=rehearsal,
        load_test=load_test,
        lag=_online_lag(lag()),
        ranged=ranged_tables_in_progress(),
    )


def _phase_progress(
    phase: type[Phase],
    cells: tuple[dict[str, str], str | None],
    tenant_ids: set[str],
    timing: dict[str, Any],
    legacy_rows: dict[str, int],
) -> PhaseProgress:
    per_tenant, phase_wide = cells
    counts = {
        state: sum(1 for s in per_tenant.values() if s == state)
        for state in ("done", "running", "failed", "rolled back")
    }
    # Copy time grows with a tenant's rows; in the other phases a tenant's work is about constant, so
    # their projection weighs every tenant the same.
    weighted = phase().scales_with_rows and sum(legacy_rows.values()) > 0
    progress = PhaseProgress(
        number=phase.number or 0,
        name=phase.name,
        summary=phase.summary,
        estimate=phase.estimate,
        tenants=len(tenant_ids),
        done=counts["done"],
        running=counts["running"],
        failed=counts["failed"],
        rolled_back=counts["rolled back"],
        phase_wide=phase_wide,
        started_at=timing.get("first"),
        finished_at=timing.get("last"),
        weighted_by_rows=weighted,
    )
    weights = {t: (legacy_rows.get(t, 0) if weighted else 1) for t in tenant_ids}
    done = {t for t, s in per_tenant.items() if s == "done"}
    return replace(progress, remaining=_project(progress.measured, weights, done, finished=progress.state == "done"))
