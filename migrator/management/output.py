"""How ``migrate_phase`` shows a run: a line per step (progress bar on a terminal), or JSON."""

from __future__ import annotations

import threading
import time
from typing import Any

from django.core.management.base import OutputWrapper
from django.core.management.color import Style

from migrator.core.steps import Event
from migrator.engine.runner import PhaseOutcome
from migrator.ops.rehearsal_report import RehearsalReport


def human_rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f} rows/s" if seconds > 0 and rows else ""


class ConsoleReporter:
    """Event callback of the runner. Verbosity as Django: 0 errors only, 1 a line per step,
    2 progress per batch with timings, 3 also the SQL of each step."""

    def __init__(
        self, stdout: OutputWrapper, style: Style, verbosity: int = 1, progress_bar: bool | None = None
    ) -> None:
        self.stdout = stdout
        self.style = style
        self.verbosity = verbosity
        self._lock = threading.Lock()
        self._bar: Any = None
        self._bar_task: Any = None
        self._use_bar = stdout.isatty() if progress_bar is None else progress_bar
        self._last_progress: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        with self._lock:
            getattr(self, f"_on_{event.kind}")(event)

    def _write(self, text: str, style_func: Any = None) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            self.stdout.write(text, style_func=style_func)

    def _on_phase_start(self, event: Event) -> None:
        if self.verbosity >= 1:
            self.stdout.write(self.style.MIGRATE_HEADING(f"Phase {event.phase}: {event.count} steps to run"))
        if self._use_bar and self.verbosity >= 1 and event.count:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.stdout._out),  # type: ignore[arg-type]  # OutputWrapper's stream
                transient=True,
            )
            self._bar.start()
            self._bar_task = self._bar.add_task(event.phase, total=event.count)

    def _on_notice(self, event: Event) -> None:
        if self.verbosity >= 1 and event.message:
            self._write(self.style.WARNING(f"Note: {event.message}"))

    def _on_phase_end(self, event: Event) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _prefix(self, event: Event) -> str:
        index = f"{(event.index or 0) + 1}/{event.count}" if event.count else ""
        return f"  [{index}] {event.step.label if event.step else ''}"

    def _on_step_start(self, event: Event) -> None:
        if self.verbosity >= 3 and event.step and event.step.sql:
            for statement in event.step.sql:
                self._write(f"    {statement}")

    def _on_step_progress(self, event: Event) -> None:
        if self._bar is not None and event.step:
            self._bar.update(
                self._bar_task, description=f"{event.phase}: {event.step.label} {event.done:,}/{event.total or 0:,}"
            )
        if self.verbosity < 2 or not event.step:
            return
        now = time.monotonic()
        if now - self._last_progress.get(event.step.key, 0) < 1.0 and event.done != event.total:
            return
        self._last_progress[event.step.key] = now
        rate = human_rate(event.done or 0, event.elapsed or 0) if event.unit == "rows" else ""
        self._write(f"{self._prefix(event)} ... {event.done:,}/{event.total or 0:,} {event.unit} {rate}".rstrip())

    def _on_step_success(self, event: Event) -> None:
        if self._bar is not None:
            self._bar.advance(self._bar_task)
        if self.verbosity >= 1:
            message = event.result.message if event.result else ""
            timing = f" ({event.elapsed:.2f}s)" if self.verbosity >= 2 and event.elapsed is not None else ""
            self._write(f"{self._prefix(event)} ... OK {message}{timing}", self.style.SUCCESS if not message else None)

    def _on_step_failure(self, event: Event) -> None:
        if self._bar is not None:
            self._bar.advance(self._bar_task)
        self._write(f"{self._prefix(event)} ... FAILED: {event.error}", self.style.ERROR)


def outcome_summary(outcome: PhaseOutcome) -> str:
    rows = outcome.rows_moved
    text = (
        f"Phase {outcome.phase}: {len(outcome.completed)} steps OK, {len(outcome.failed)} failed "
        f"in {outcome.elapsed:.1f}s"
    )
    if rows:
        text += f"; {rows:,} rows copied ({human_rate(rows, outcome.elapsed)})"
    if outcome.not_started:
        text += f"; stopped on request: {outcome.not_started} steps not started"
    return text


def outcome_dict(outcome: PhaseOutcome) -> dict[str, object]:
    return {
        "phase": outcome.phase,
        "ok": outcome.ok,
        "planned": outcome.planned,
        "elapsed_s": round(outcome.elapsed, 3),
        "rows_moved": outcome.rows_moved,
        "not_started": outcome.not_started,
        "completed": [
            {
                "migration_id": s.key,
                "message": outcome.results[s.key].message,
                "rows": outcome.results[s.key].rows_copied,
            }
            for s in outcome.completed
        ],
        "failed": [{"migration_id": s.key, "error": error} for s, error in outcome.failed],
    }


def rehearsal_lines(report: RehearsalReport) -> list[str]:
    """The rehearsal's report for a terminal: per phase, then the projection and its assumptions."""
    lines = [
        f"Rehearsal of {report.source_database} in {report.target_database} "
        f"(backup {report.backup_path}): " + ("all phases passed" if report.ok else "FAILED")
    ]
    for phase in report.phases:
        rate = f", {phase.rows_per_second:,.0f} rows/s" if phase.rows_per_second else ""
        state = "OK" if phase.ok else "FAILED"
        lines.append(f"  {phase.phase:<9} {state:<6} {phase.seconds:8.1f} s  {phase.steps} steps{rate}")
        lines += [f"      {f.step}: {f.error}" for f in phase.failed]
        if phase.error and not phase.failed:
            lines.append(f"      {phase.error}")
    lines += [f"  {name:<9} not run" for name in report.not_run]
    projection = report.projection
    rehearsed, live = report.rehearsed_volume, report.live_volume
    lines.append(
        f"Projection for the live database ({live.tenants} tenants, {live.rows:,} rows; the backup: "
        f"{rehearsed.tenants} tenants, {rehearsed.rows:,} rows):"
    )
    for projected in projection.phases:
        lines.append(
            f"  {projected.phase:<9} {projected.low_seconds:.1f} to {projected.high_seconds:.1f} s "
            f"(scaled by {projected.scaled_by})"
        )
    lines.append(
        f"  total     {projection.total_low_seconds:.1f} to {projection.total_high_seconds:.1f} s"
        + ("" if projection.complete else " for the phases that ran")
    )
    lines += [f"  assuming {text}" for text in projection.assumptions]
    lines += [f"Note: {text}" for text in report.notes]
    if report.kept:
        lines.append(f"The scratch database {report.target_database} was kept; the next rehearsal drops it.")
    return lines
