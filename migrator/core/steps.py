"""What a phase plans (steps) and what applying a step yields (results and events)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


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
    target: str = ""
    sql: tuple[str, ...] = ()
    destructive: bool = False
    rerun: bool = False

    @property
    def key(self) -> str:
        parts = [self.phase, self.tenant_id or "*", self.kind]
        if self.target:
            parts.append(self.target)
        return "/".join(parts)

    @property
    def label(self) -> str:
        scope = self.tenant_id or "all"
        return f"[{scope}] {self.kind}" + (f" {self.target}" if self.target else "")


@dataclass
class StepResult:
    """What a step did; stored on its tracking row."""

    message: str = ""
    rows_expected: int | None = None
    rows_copied: int | None = None
    source_fingerprint: str | None = None
    target_fingerprint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _ignore(*args: object) -> None:
    return None


@dataclass(frozen=True)
class StepReporter:
    """What a running step tells the engine, which owns the step's tracking row.

    ``progress(done, total)`` is shown to the operator. ``expected(rows)`` stores the source row
    count once it is known. ``checkpoint(key, rows_done)`` stores how far a copy got; it is called
    inside the batch's transaction, so the checkpoint commits with the batch it describes.
    ``fence()`` is called at the start of each batch's transaction and raises when this run may no
    longer write (it lost the migrator lock): the batch then rolls back and the step stops.
    """

    progress: Callable[[int, int | None], None] = _ignore
    expected: Callable[[int], None] = _ignore
    checkpoint: Callable[[int | None, int], None] = _ignore
    fence: Callable[[], None] = _ignore


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
