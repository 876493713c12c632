"""The phase registry: numbers and names -> phase classes. Adding a phase is one module and one line.

Whatever lists phases or their steps (``--help``, ``status``, the dashboard, the rehearsal, rollback)
reads ``PHASES`` and ``ORDERED`` here when it runs, never a copy taken at import: a phase added here is
everywhere at once (and a test may register one for a while).
"""

from __future__ import annotations

from migrator.core.phase import Phase
from migrator.phases.cutover import CutoverPhase
from migrator.phases.data import DataPhase
from migrator.phases.finalize import FinalizePhase
from migrator.phases.prepare import PreparePhase
from migrator.phases.rehearse import RehearsePhase
from migrator.phases.rollback import RollbackPhase
from migrator.phases.schemas import SchemasPhase
from migrator.phases.security import SecurityPhase
from migrator.phases.sync import SyncPhase
from migrator.phases.verify import VerifyPhase
from migrator.step_ref import StepRef

PHASES: tuple[type[Phase], ...] = (
    PreparePhase,
    SchemasPhase,
    DataPhase,
    SecurityPhase,
    VerifyPhase,
    CutoverPhase,
    RollbackPhase,
    RehearsePhase,
    SyncPhase,
    FinalizePhase,
)
# The phases `all` runs, in order.
ORDERED: tuple[type[Phase], ...] = tuple(sorted((p for p in PHASES if p.number), key=lambda p: p.number or 0))
EXTRA_COMMANDS = ("all", "status")


def get_phase(name_or_number: str) -> type[Phase]:
    for phase in PHASES:
        if name_or_number in (phase.name, str(phase.number)):
            return phase
    raise KeyError(name_or_number)


def phases_help() -> str:
    """The phases for ``migrate_phase --help``, from each phase's own summary."""
    ordered = "; ".join(f"{p.number} {p.name} ({p.summary})" for p in ORDERED)
    others = "; ".join(f"{p.name} ({p.summary})" for p in PHASES if not p.number)
    first, last = ORDERED[0].number, ORDERED[-1].number
    return (
        f"Phases: {ordered}; {others}. `all` runs {first} to {last} and stops at the first failure; "
        "`status` shows phases x tenants."
    )


def phase_choices() -> list[str]:
    return [f"{p.number} {p.name}" if p.number else p.name for p in PHASES] + list(EXTRA_COMMANDS)


def steps_moving_rows() -> list[StepRef]:
    """Every kind of step, of every phase, whose ``rows_copied`` are rows it wrote (``StepKind.moves_rows``)."""
    return [StepRef(p.name, name) for p in PHASES for name, kind in p().kinds.items() if kind.moves_rows]
