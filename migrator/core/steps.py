"""What a phase plans (steps) and what applying a step yields (results and events)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from migrator.core.fingerprint import Fingerprint
from migrator.step_ref import NO_TARGET, StepKey, StepRef, Target


@dataclass(frozen=True, slots=True)
class Step:
    """One unit of work, tracked by its own rows in ``public.schema_migrations``.

    ``key`` is the ``migration_id``: stable across runs, so a rerun finds the step's history.
    ``rerun``: the phase found new work for a step that completed before (a tenant registered
    since), so it runs again as a new attempt instead of being skipped.
    """

    phase: str
    phase_number: int | None
    kind: str
    description: str
    tenant_id: str | None = None
    target: Target = NO_TARGET
    sql: tuple[str, ...] = ()
    destructive: bool = False
    rerun: bool = False

    @property
    def ref(self) -> StepRef:
        return StepRef(self.phase, self.kind)

    @property
    def step_key(self) -> StepKey:
        return StepKey(self.ref, self.tenant_id, self.target)

    @property
    def key(self) -> str:
        return self.step_key.migration_id

    @property
    def label(self) -> str:
        scope = self.tenant_id or "all"
        return f"[{scope}] {self.kind}" + (f" {self.target}" if self.target.name else "")


@dataclass
class StepResult:
    """What a step did; stored on its tracking row."""

    message: str = ""
    rows_expected: int | None = None
    rows_copied: int | None = None
    source_fingerprint: Fingerprint | None = None
    target_fingerprint: Fingerprint | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # the step kind's type in migrator.core.details

    def columns(self) -> dict[str, int | str | None]:
        """The result's columns of its tracking row, as they are stored (fingerprints in their text form)."""
        return {
            "rows_expected": self.rows_expected,
            "rows_copied": self.rows_copied,
            "source_fingerprint": _stored(self.source_fingerprint),
            "target_fingerprint": _stored(self.target_fingerprint),
        }


def _stored(value: Fingerprint | None) -> str | None:
    return None if value is None else str(value)


def _ignore(*args: object) -> None:
    return None


class Progress(Protocol):
    """How far a step got: ``done`` of ``total`` (None: not known) ``unit`` (rows, unless the step says)."""

    def __call__(self, done: int, total: int | None, unit: str = "rows") -> None: ...


def _ignore_progress(done: int, total: int | None, unit: str = "rows") -> None:
    return None


@dataclass(frozen=True, slots=True)
class KeyRange:
    """One part of a large table split by its single integer key: the keys above ``after`` up to and
    including ``through`` (None: unbounded on that side, so the parts together cover every key).

    ``rows_planned`` is the planner's estimate of its rows (statistics, never a count). A range resumed
    after an interrupted attempt carries how far it got: ``resume_after`` (the last key of its last
    committed batch) and ``rows_done`` (rows committed so far).
    """

    index: int  # 1-based position in the table's plan
    count: int  # ranges in the plan
    after: int | None
    through: int | None
    rows_planned: int
    resume_after: int | None = None
    rows_done: int = 0

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


# The kind of the record the engine writes for a tenant left out of a phase (--skip-schema).
EXCLUDE = "exclude"
# The kinds of the sub-step rows of a large table's key ranges (StepReporter.ranges): a copy's, a validation's.
COPY_RANGE, VALIDATE_RANGE = "copy_range", "validate_range"
RANGE_KINDS = (COPY_RANGE, VALIDATE_RANGE)

# Does one range of a ranged step; its reporter's checkpoint belongs to the range, not to the step.
RangeWork = Callable[[KeyRange, "StepReporter"], "StepResult"]


RangeResults = list[tuple[KeyRange, "StepResult"]] | None
SizedTask = tuple[int, Callable[[], None]]


def tasks_in_order(tasks: list[SizedTask]) -> None:
    for _size, task in tasks:
        task()


class RunRanges(Protocol):
    """``StepReporter.ranges``: ``part`` names the table when one step splits several (a scope's cutover
    comparison); their range rows carry it as their target, so each table keeps its own plan."""

    def __call__(
        self, kind: str, plan: Callable[[], list[KeyRange]], work: RangeWork, resume: bool, part: str = ""
    ) -> RangeResults: ...


def ranges_in_order(
    kind: str, plan: Callable[[], list[KeyRange]], work: RangeWork, resume: bool, part: str = ""
) -> RangeResults:
    """Ranges done one after the other on this connection, with nothing recorded (no engine around)."""
    ranges = plan()
    return [(r, work(r, StepReporter())) for r in ranges] if len(ranges) >= 2 else None


@dataclass(frozen=True)
class StepReporter:
    """What a running step tells the engine, which owns the step's tracking row.

    ``progress(done, total, unit)`` is shown to the operator (``unit``: rows unless the step says).
    ``expected(rows)`` stores the source row count once it is known. ``checkpoint(key, rows_done)``
    stores how far a copy got; it is called
    inside the batch's transaction, so the checkpoint commits with the batch it describes.
    ``fence()`` is called at the start of each batch's transaction and raises when this run may no
    longer write (it lost the migrator lock): the batch then rolls back and the step stops.

    ``ranges(kind, plan, work, resume)`` does a large table's work range by range: the engine records
    the ranges ``plan()`` returns as rows of their own (``kind``: ``copy_range``, ``validate_range``)
    unless an earlier attempt of the step recorded them already (then those ranges are taken as they
    were and, with ``resume``, the completed ones are not done again and the others resume from their
    checkpoints; a validation reads everything again, so it does not resume), hands each range
    to whichever of the run's ``--jobs`` connections is free (this one included), and returns every
    range with its result once all are done; the first range that failed raises its error then.
    None when nothing is recorded and ``plan()`` made fewer than two ranges: the caller does the
    table whole. Without an engine the ranges run here, one after the other. ``parallel(tasks)`` runs
    ``(size, task)`` pairs the same way, with nothing recorded (a large table's index builds), and
    returns once all ended, raising the first error one raised.

    ``batch``: what the phase's ``tenant_batch`` read for the batch of tenants this step runs in
    (None: the step runs outside one), handed to the step explicitly. ``tenant``: likewise, what the
    phase's ``tenant_context`` yielded for the tenant this step runs for (None: outside one).
    """

    progress: Progress = _ignore_progress
    expected: Callable[[int], None] = _ignore
    checkpoint: Callable[[int | None, int], None] = _ignore
    fence: Callable[[], None] = _ignore
    ranges: RunRanges = ranges_in_order
    parallel: Callable[[list[SizedTask]], None] = tasks_in_order
    batch: object = None
    tenant: object = None


EventKind = Literal["phase_start", "step_start", "step_progress", "step_success", "step_failure", "phase_end", "notice"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    phase: str
    step: Step | None = None
    result: StepResult | None = None
    error: str | None = None
    done: int | None = None
    total: int | None = None
    elapsed: float | None = None
    index: int | None = None
    count: int | None = None
    message: str | None = None  # notice: what the engine decided for the operator (e.g. --jobs capped)
    unit: str = "rows"  # of done and total
