"""What ``migrate_phase`` does, without any printing: plan, check, run phases under the lock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection

from migrator import catalog
from migrator.engine import tracking
from migrator.core.context import MigrationContext
from migrator.core.errors import MigrationError
from migrator.engine.lock import MigratorLock
from migrator.engine.runner import EventCallback, PhaseOutcome, PhaseRunner, pending_steps
from migrator.core.steps import Step
from migrator.core.phase import Phase
from migrator.django_migrations import BOOTSTRAP_APPS, migrate_schema, unapplied


def check_database() -> None:
    """Fail with one line when the database cannot be reached."""
    try:
        connection.ensure_connection()
    except Exception as exc:  # psycopg raises several kinds; all mean the same to the operator
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise MigrationError(f"cannot connect to the database {connection.settings_dict['NAME']!r}: {reason}; "
                             "check DATABASE_URL and that the server is running") from None


def tracking_ready() -> bool:
    return catalog.table_exists("public", "schema_migrations") and catalog.table_exists("public", "tenants")


def ensure_tracking_ready() -> list[str]:
    """The tracking and registry tables must exist before anything is recorded."""
    if tracking_ready() and not unapplied("public", BOOTSTRAP_APPS):
        return []
    return migrate_schema("public", BOOTSTRAP_APPS)


@dataclass
class PlannedPhase:
    phase: Phase
    steps: list[Step]


def plan_phase(phase: Phase, ctx: MigrationContext) -> PlannedPhase:
    """Steps that a run would apply now (reads only)."""
    if ctx.options.validate_only:
        return PlannedPhase(phase, phase.plan(ctx))
    if not tracking_ready():
        ctx.forget_tenants(known=[])  # no registry yet: nothing of it to plan for
        return PlannedPhase(phase, phase.plan(ctx))
    return PlannedPhase(phase, pending_steps(phase, ctx))


def run_phases(phases: list[Phase], ctx: MigrationContext, on_event: EventCallback,
               confirm: Callable[[str, str], bool]) -> list[PhaseOutcome]:
    """Run ``phases`` in order under the migrator lock; stop at the first phase that fails.

    ``confirm(phase name, question)`` is asked before a phase whose steps change data irreversibly.
    """
    ensure_tracking_ready()
    outcomes: list[PhaseOutcome] = []
    with MigratorLock("+".join(p.name for p in phases)) as lock:
        tracking.close_interrupted()  # whatever a dead run left RUNNING, in any phase
        for phase in phases:
            ctx.forget_tenants()  # an earlier phase may have registered tenants
            planned = plan_phase(phase, ctx)
            if (planned.steps and phase.asks_confirmation
                    and not confirm(phase.name, phase.confirmation_question(ctx, planned.steps))):
                raise MigrationError(f"phase {phase.name} cancelled; nothing was changed")
            tracking.close_interrupted(phase.name)
            outcome = PhaseRunner(ctx, on_event, still_locked=lock.check).run(phase, planned.steps)
            outcomes.append(outcome)
            if not outcome.ok:
                break
    return outcomes
