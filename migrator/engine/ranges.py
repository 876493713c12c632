"""A large table's key ranges (see ``StepReporter.ranges`` and docs/reliability.md, "Large tables in
key ranges"): each range has a tracking row of its own, which its batches' checkpoints commit with, and
runs on whichever connection of the run is free."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import psycopg
from django.db import DatabaseError, connection
from django.utils import timezone

from migrator.core.errors import MigrationError
from migrator.core.steps import KeyRange, RangeResults, RangeWork, SizedTask, Step, StepReporter, StepResult
from migrator.engine import recording, tracking
from migrator.engine.failures import database_error_line, recover_connection
from migrator.engine.recording import StepEnd
from migrator.models import Status


def run_ranges(
    step: Step,
    kind: str,
    plan: Callable[[], list[KeyRange]],
    work: RangeWork,
    resume: bool,
    progress: Callable[[int, int | None], None],
    share: Callable[[list[SizedTask]], None],
    still_locked: Callable[[], None],
) -> RangeResults:
    """A step's ranges: the plan an earlier attempt recorded, else ``plan()`` recorded now; each range
    not yet COMPLETED (with ``resume``; else every range) is done through ``share`` (on whichever
    connection is free), with a tracking row of its own that its batches' checkpoints commit with. A
    recorded plan is kept even by a step that does all its ranges again (a validation): its ranges
    keep their rows, so none is left behind as an earlier attempt left it."""
    recorded = tracking.recorded_ranges(step, kind)
    if recorded and not resume:  # the same ranges (their rows stay the table's), all done again
        recorded = [(replace(r, resume_after=None, rows_done=0), row, Status.PENDING) for r, row, _s in recorded]
    results: dict[int, tuple[KeyRange, StepResult]] = {}
    if recorded:
        todo = [key_range for key_range, _row, status in recorded if status != Status.COMPLETED]
        for key_range, _row, status in recorded:
            if status == Status.COMPLETED:
                results[key_range.index] = (key_range, StepResult(rows_copied=key_range.rows_done))
    else:
        todo = plan()
        if len(todo) < 2:
            return None
    rows = tracking.record_ranges(step, kind, todo)
    done = {r.index: r.rows_done for r in todo} | {i: result.rows_copied or 0 for i, (_r, result) in results.items()}
    planned = sum(r.rows_planned for r, _row, _status in recorded) if recorded else sum(r.rows_planned for r in todo)
    lock = threading.Lock()

    def range_progress(index: int, rows: int) -> None:
        with lock:
            done[index] = rows
            total = sum(done.values())
        progress(total, planned)

    def task(key_range: KeyRange) -> Callable[[], None]:
        def run() -> None:
            result = run_range(key_range, rows[key_range.index], work, range_progress, still_locked)
            results[key_range.index] = (key_range, result)

        return run

    share([(r.rows_planned, task(r)) for r in todo])
    return [results[index] for index in sorted(results)]


def run_range(
    key_range: KeyRange,
    record: tracking.StepRow,
    work: RangeWork,
    range_progress: Callable[[int, int], None],
    still_locked: Callable[[], None],
) -> StepResult:
    """One range on this thread's connection, recorded on its own row; its error is re-raised for
    the step (which fails with it) after the row says FAILED."""
    still_locked()
    started_at = recording.start(record).started_at or timezone.now()
    atomic_depth = len(connection.atomic_blocks)
    reporter = StepReporter(
        progress=lambda rows, _total, _unit="rows": range_progress(key_range.index, rows),
        checkpoint=lambda key, rows: tracking.save_checkpoint(record.pk, key, rows),
        fence=still_locked,
    )
    try:
        result = work(key_range, reporter)
    except BaseException as exc:
        recover_connection(atomic_depth)
        error = str(exc) if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, DatabaseError | psycopg.Error):
            error = f"database error: {database_error_line(exc)}"
        recording.record([StepEnd(record.pk, Status.FAILED, None, error, started_at, timezone.now())])
        raise
    recording.record([StepEnd(record.pk, Status.COMPLETED, result, None, started_at, timezone.now())])
    return result
