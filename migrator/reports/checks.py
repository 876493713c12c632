"""What the dashboard shows of the last rehearsal and the last load test (verify), read from their tracking
records; and the short durations its tables print."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import F, Q

from migrator.core.details import CheckDetails, RehearseDetails, read_details
from migrator.models import MigrationRecord, Status, of_steps
from migrator.ops.load_figures import LEGACY, NEW, LoadTestFigures, QueryFigures
from migrator.ops.rehearsal_report import RehearsalReport
from migrator.phases.rehearse import RehearsePhase
from migrator.phases.verify import VerifyPhase


@dataclass(frozen=True)
class RehearsedPhase:
    name: str
    ok: bool
    seconds: float
    rows_per_second: float | None
    projected_low: float | None
    projected_high: float | None
    errors: list[str]

    @property
    def seconds_text(self) -> str:
        return format_duration(timedelta(seconds=self.seconds))

    @property
    def projected_text(self) -> str:
        if self.projected_low is None or self.projected_high is None:
            return "—"
        return (
            f"{format_duration(timedelta(seconds=self.projected_low))} to "
            f"{format_duration(timedelta(seconds=self.projected_high))}"
        )


@dataclass(frozen=True)
class RehearsalSummary:
    """The latest `migrate_phase rehearse` report (its one tracking record)."""

    record_id: int
    completed_at: datetime | None
    ok: bool
    target_database: str
    phases: dict[str, RehearsedPhase]
    not_run: list[str]
    projected_text: str
    assumptions: list[str]


@dataclass(frozen=True)
class LoadQuery:
    name: str
    legacy: QueryFigures | None
    new: QueryFigures | None
    legacy_bar: float = 0.0  # p95 as a percentage of the largest p95 of the table: the chart's bar widths
    new_bar: float = 0.0


@dataclass(frozen=True)
class LoadTestSummary:
    """The latest load_test step of verify: figures per key query for both layouts."""

    record_id: int
    status: str
    completed_at: datetime | None
    clients: int | None
    seconds: float | None
    max_regression: float | None
    queries: list[LoadQuery]
    problems: list[str]


def latest_rehearsal_and_load_test() -> tuple[RehearsalSummary | None, LoadTestSummary | None]:
    """The latest completed rehearsal and the latest load test, in one query (DISTINCT ON the step)."""
    rows = (
        MigrationRecord.objects.filter(
            (of_steps(RehearsePhase.REHEARSAL) & Q(status=Status.COMPLETED))
            | (of_steps(VerifyPhase.LOAD_TEST) & Q(status__in=[Status.COMPLETED, Status.FAILED]))
        )
        .order_by("step", F("completed_at").desc(nulls_last=True), "-id")
        .distinct("step")
    )
    rehearsal = load_test = None
    for record in rows:
        if record.step == RehearsePhase.REHEARSAL.kind and isinstance(
            read_details(RehearseDetails, record.details).get("rehearsal"), dict
        ):
            rehearsal = rehearsal_summary(record)
        elif record.step == VerifyPhase.LOAD_TEST.kind and isinstance(
            read_details(CheckDetails, record.details).get("load_test"), dict
        ):
            load_test = load_test_summary(record)
    return rehearsal, load_test


def rehearsal_summary(record: MigrationRecord) -> RehearsalSummary:
    report = RehearsalReport.from_json(read_details(RehearseDetails, record.details)["rehearsal"])
    projection = report.projection
    projected = {p.phase: p for p in projection.phases}
    phases = {}
    for phase in report.phases:
        name = phase.phase
        errors = [f"{f.step}: {f.error}" for f in phase.failed]
        if phase.error and not errors:
            errors.append(phase.error)
        phases[name] = RehearsedPhase(
            name=name,
            ok=phase.ok,
            seconds=phase.seconds,
            rows_per_second=phase.rows_per_second,
            projected_low=projected[name].low_seconds if name in projected else None,
            projected_high=projected[name].high_seconds if name in projected else None,
            errors=errors,
        )
    low, high = projection.total_low_seconds, projection.total_high_seconds
    total = f"{format_duration(timedelta(seconds=low))} to {format_duration(timedelta(seconds=high))}"
    return RehearsalSummary(
        record_id=record.pk,
        completed_at=record.completed_at,
        ok=report.ok,
        target_database=report.target_database,
        phases=phases,
        not_run=report.not_run,
        projected_text=total,
        assumptions=projection.assumptions,
    )


def load_test_summary(record: MigrationRecord) -> LoadTestSummary:
    details = read_details(CheckDetails, record.details)
    figures = LoadTestFigures.from_json(details["load_test"])
    layouts = figures.layouts
    legacy = layouts[LEGACY].queries if LEGACY in layouts else {}
    new = layouts[NEW].queries if NEW in layouts else {}
    names = list(dict.fromkeys([*legacy, *new]))
    largest = max([q.p95_ms or 0 for q in [*legacy.values(), *new.values()]] + [0])

    def bar(stats: QueryFigures | None) -> float:
        return round(100.0 * (stats.p95_ms or 0) / largest, 1) if stats and largest else 0.0

    queries = [
        LoadQuery(name, legacy.get(name), new.get(name), bar(legacy.get(name)), bar(new.get(name))) for name in names
    ]
    return LoadTestSummary(
        record_id=record.pk,
        status=record.status,
        completed_at=record.completed_at,
        clients=figures.clients,
        seconds=figures.seconds,
        max_regression=figures.max_regression_percent,
        queries=queries,
        problems=list(details.get("problems", [])),
    )


def format_duration(value: timedelta | None) -> str:
    """Short human duration for tables: 0.4 s, 12.3 s, 3 min 12 s, 2 h 5 min, 1 d 3 h."""
    if value is None:
        return "—"
    seconds = value.total_seconds()
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
