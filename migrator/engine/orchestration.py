"""What ``migrate_phase`` does, without any printing: plan, check, run phases under the lock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from django.db import DatabaseError, connection

from migrator import catalog, db
from migrator.core.context import MigrationContext
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase
from migrator.core.steps import Event, Step
from migrator.django_migrations import (
    all_recorded,
    bootstrap_apps,
    legacy_registry_present,
    migrate_schema,
    unapplied,
)
from migrator.engine import tracking
from migrator.engine.lock import MigratorLock
from migrator.engine.runner import EventCallback, PhaseOutcome, PhaseRunner, pending_steps
from salesflow.layout import TENANT_SCHEMA_PREFIX, is_tenant_schema_name, tenant_id_from_schema

# A phase that wrote at least this many tracking rows refreshes the table's statistics (see tracking.analyze).
ANALYZE_TRACKING_FROM_STEPS = 1000


def check_database() -> None:
    """Fail with one line when the database cannot be reached."""
    try:
        connection.ensure_connection()
    except (DatabaseError, psycopg.Error, OSError) as exc:  # all mean the same to the operator
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise MigrationError(
            f"cannot connect to the database {connection.settings_dict['NAME']!r}: {reason}; "
            "check DATABASE_URL and that the server is running"
        ) from None


def tracking_ready() -> bool:
    return (
        catalog.table_exists("public", "schema_migrations")
        and catalog.table_exists("public", "tenants")
        and not legacy_registry_present()
    )


def ensure_tracking_ready() -> list[str]:
    """The tracking and registry tables must exist before anything is recorded."""
    apps = bootstrap_apps()
    if tracking_ready() and (all_recorded("public", apps) or not unapplied("public", apps)):
        return []
    return migrate_schema("public", apps)


def free_connections() -> int:
    """Connections this role can still open: the server's, the database's and the role's limits
    minus the sessions that count against each (PostgreSQL exempts superusers from the last two)."""
    return int(
        db.fetchvalue(
            "WITH me AS (SELECT rolsuper, rolconnlimit FROM pg_roles WHERE rolname = current_user), "
            "d AS (SELECT datconnlimit FROM pg_database WHERE datname = current_database()), "
            "used AS (SELECT count(*) AS server, "
            "  count(*) FILTER (WHERE datname = current_database()) AS here, "
            "  count(*) FILTER (WHERE usename = current_user) AS mine "
            "  FROM pg_stat_activity WHERE backend_type = 'client backend') "
            "SELECT least("
            "  current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int "
            "    - coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0) - used.server, "
            "  CASE WHEN NOT me.rolsuper AND d.datconnlimit >= 0 THEN d.datconnlimit - used.here END, "
            "  CASE WHEN NOT me.rolsuper AND me.rolconnlimit >= 0 THEN me.rolconnlimit - used.mine END) "
            "FROM me, d, used"
        )
    )


def cap_jobs(ctx: MigrationContext) -> str | None:
    """Lower ``ctx.jobs`` to what the server lets us connect, instead of failing steps half way.

    Each tenant worker opens one connection, ``pg_dump --jobs=N`` opens N + 1: one is kept spare.
    """
    if ctx.jobs <= 1:
        return None
    free = free_connections()
    allowed = max(1, free - 1)
    if ctx.jobs <= allowed:
        return None
    requested, ctx.jobs = ctx.jobs, allowed
    return (
        f"--jobs {requested} is more than the server has free connections for ({max(free, 0)} free); "
        f"running with --jobs {allowed}"
    )


def refuse_options(ctx: MigrationContext, phases: list[Phase]) -> None:
    """What the run's options cannot mean, refused before anything changes (a recovery, an exclusion)."""
    not_schemas = [schema for schema in ctx.options.skip_schemas if not is_tenant_schema_name(schema)]
    if not_schemas:  # a tenant id, say: left out of nothing, the run would migrate the tenant after all
        raise MigrationError(
            f"--skip-schema {not_schemas[0]!r} is not a tenant schema's name: give the schema "
            f"({TENANT_SCHEMA_PREFIX + not_schemas[0]!r} for tenant {not_schemas[0]!r})"
        )
    for phase in phases:
        phase.refuse_options(ctx)


def exclude_skipped_tenants(ctx: MigrationContext, phase: Phase) -> list[str]:
    """Tenants named by --skip-schema that are registered: EXCLUDED from now on (recorded under ``phase``).

    A live tenant cannot be left out (its legacy tables are archived already), nor one the run also
    selects with --tenant. Schemas that are no registered tenant are prepare's to judge.
    """
    from tenants.models import MigrationState, Tenant

    named = {tenant_id_from_schema(schema): schema for schema in ctx.options.skip_schemas}
    named.pop(None, None)
    if not named:
        return []
    both = [t for t in ctx.tenant_filter if t in named]
    if both:
        raise MigrationError(f"tenant {both[0]!r} is given both --tenant and --skip-schema; choose one")
    states = dict(Tenant.objects.filter(tenant_id__in=list(named)).values_list("tenant_id", "migration_state"))
    live = sorted(t for t, state in states.items() if state == MigrationState.LIVE)
    if live:
        raise MigrationError(
            f"--skip-schema {named[live[0]]}: tenant {live[0]} is live (its legacy tables are archived); "
            "it cannot be left out now: roll it back first with `migrate_phase rollback`"
        )
    if phase.tenant_state_on_success != MigrationState.REGISTERED:  # the phase that registers finds schemas
        unknown = sorted(s for t, s in named.items() if t not in states and not catalog.schema_exists(s))
        if unknown:
            raise MigrationError(f"--skip-schema {unknown[0]!r}: no tenant_* schema of that name in this database")
    todo = sorted(t for t, state in states.items() if state not in (MigrationState.EXCLUDED, MigrationState.NEW))
    tracking.record_exclusions(phase.name, phase.number, [str(t) for t in todo], "--skip-schema")
    return [str(t) for t in todo]


@dataclass
class PlannedPhase:
    phase: Phase
    steps: list[Step]


def plan_phase(phase: Phase, ctx: MigrationContext) -> PlannedPhase:
    """Steps that a run would apply now (reads only)."""
    refuse_options(ctx, [phase])
    if ctx.options.validate_only:
        return PlannedPhase(phase, phase.plan(ctx))
    if not tracking_ready():
        ctx.forget_tenants(known=[])  # no registry yet: nothing of it to plan for
        return PlannedPhase(phase, phase.plan(ctx))
    return PlannedPhase(phase, pending_steps(phase, ctx))


def run_phases(
    phases: list[Phase],
    ctx: MigrationContext,
    on_event: EventCallback,
    confirm: Callable[[str, str], bool],
    on_outcome: Callable[[PhaseOutcome], None] = lambda outcome: None,
) -> list[PhaseOutcome]:
    """Run ``phases`` in order under the migrator lock; stop at the first phase that fails.

    ``confirm(phase name, question)`` is asked before a phase whose steps change data irreversibly;
    ``on_outcome`` gets each phase's outcome as soon as the phase has ended.
    """
    refuse_options(ctx, phases)
    outcomes: list[PhaseOutcome] = []
    changes_schemas = any(p.changes_schemas for p in phases)
    with MigratorLock("+".join(p.name for p in phases), schemas=changes_schemas) as lock:
        ctx.lock = lock
        for phase in phases:
            if notice := phase.recover(ctx):
                on_event(Event("notice", phase.name, message=notice))
        # Under the lock: two first runs at once would both create the tracking tables.
        ensure_tracking_ready()
        if notice := cap_jobs(ctx):
            on_event(Event("notice", phases[0].name, message=notice))
        tracking.close_interrupted()  # whatever a dead run left RUNNING, in any phase
        excluded = exclude_skipped_tenants(ctx, phases[0])
        if excluded:
            on_event(
                Event(
                    "notice",
                    phases[0].name,
                    message=f"left out by --skip-schema from now on: {', '.join(excluded)} (legacy tables untouched)",
                )
            )
        for phase in phases:
            if ctx.options.stop.is_set():
                break  # a stop was asked for: the phases after the one it stopped are not started
            ctx.forget_tenants()  # an earlier phase may have registered tenants
            planned = plan_phase(phase, ctx)
            if planned.steps:
                phase.check_ready(ctx, planned.steps)
            if (
                planned.steps
                and phase.asks_confirmation
                and not confirm(phase.name, phase.confirmation_question(ctx, planned.steps))
            ):
                raise MigrationError(f"phase {phase.name} cancelled; nothing was changed")
            tracking.close_interrupted(phase.name)
            outcome = PhaseRunner(ctx, on_event, still_locked=lock.check).run(phase, planned.steps)
            outcomes.append(outcome)
            if outcome.planned >= ANALYZE_TRACKING_FROM_STEPS:
                tracking.analyze()
            on_outcome(outcome)
            if not outcome.ok:
                break
    return outcomes
