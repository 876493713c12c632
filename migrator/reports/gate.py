"""The deploy gate and the migration's overall state, for pipelines.

``migrate_phase status --check`` asks "is the migration complete?"; a deploy pipeline asks another
question: "may ``migrate_schemas`` run now?" (:func:`deploy_verdict`, ``status --deploy-check``), and
"where does the migration stand?" (:func:`migration_state`, ``status --format json``). The gate
matrix is in docs/deploys.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Max

from migrator import catalog
from migrator import phases as phase_registry
from migrator.config import get_config
from migrator.engine.lock import APP_NAME_PREFIX, LOCK_ID, LOCK_NAMESPACE
from migrator.models import DEPLOY, MigrationRecord, Status
from migrator.modes import online
from migrator.ops import capture, constraints, twoway
from migrator.phases.cutover import CutoverPhase
from migrator.phases.rollback import RollbackPhase
from migrator.reports.status import StatusReport
from salesflow.layout import tenant_schema_name


def ddl_phases() -> list[str]:
    """Phases whose steps change tenant or service schemas (``Phase.alters_tables``): a deploy's DDL must
    not meet theirs."""
    return [p.name for p in phase_registry.PHASES if p.alters_tables]


NOT_STARTED = "not started"
RUNNING = "running"
FAILED = "failed"
ROLLED_BACK = "rolled back"
ONLINE_WINDOW_OPEN = "online window open"
COMPLETE = "complete"
STATES = (NOT_STARTED, RUNNING, FAILED, ROLLED_BACK, ONLINE_WINDOW_OPEN, COMPLETE)


@dataclass(frozen=True)
class DeployVerdict:
    safe: bool
    reason: str  # one line, either way


@dataclass(frozen=True)
class LockHolder:
    """A ``migrate_phase`` that holds the migrator lock now, and the phases it runs."""

    description: str
    phases: tuple[str, ...]


def holder_phases(application_name: str) -> tuple[str, ...]:
    """The phases named in a lock holder's ``application_name`` (see ``engine.lock.holder_name``):
    ``data``, ``schemas+data``, ``prepare..cutover`` (a shortened list); a name cut short names
    every phase (it may be any of them)."""
    label = application_name.removeprefix(APP_NAME_PREFIX).strip().split(" on ", 1)[0]
    ordered = [p.name for p in phase_registry.ORDERED]
    known = {p.name for p in phase_registry.PHASES}
    phases: list[str] = []
    for part in label.split("+"):
        first, _, last = part.partition("..")
        if part.endswith("..") or (part and part not in known and first not in known):
            return tuple(p.name for p in phase_registry.PHASES)
        if last and first in ordered and last in ordered:
            phases.extend(ordered[ordered.index(first) : ordered.index(last) + 1])
        elif part:
            phases.append(part)
    return tuple(phases)


def lock_holders() -> list[LockHolder]:
    return [
        LockHolder(name.removeprefix(APP_NAME_PREFIX).strip() or name, holder_phases(name))
        for name in catalog.advisory_lock_holders(LOCK_NAMESPACE, LOCK_ID)
    ]


def ddl_in_progress(holders: list[LockHolder], tracked: bool = True) -> str | None:
    """Why a phase may be changing schemas now: a running ``migrate_phase`` of a DDL phase, or a step of
    one left RUNNING by a run that is gone (interrupted: it may have left indexes dropped, tables half
    renamed). ``tracked`` False: no tracking table to read yet."""
    altering = ddl_phases()
    for holder in holders:
        ddl = [phase for phase in holder.phases if phase in altering]
        if ddl:
            return (
                f"migrate_phase {holder.description} is running and changes schemas ({', '.join(ddl)}): "
                "deploy when it has finished"
            )
    if not tracked:
        return None
    running = (
        MigrationRecord.objects.filter(phase__in=altering, status=Status.RUNNING)
        .latest_attempts()
        .order_by("started_at", "id")
        .only("migration_id", "phase", "started_at")
        .first()
    )
    if running is None:
        return None
    since = f" since {running.started_at:%Y-%m-%d %H:%M:%S %Z}" if running.started_at else ""
    if holders:
        return (
            f"phase {running.phase} is changing schemas (step {running.migration_id} RUNNING{since}): "
            "deploy when it has finished"
        )
    rerun = running.phase
    if running.phase == RollbackPhase.name and _restore_unfinished():
        rerun += " --restore"  # a plain rollback is another one (refused once a tenant is live)
    return (
        f"phase {running.phase} was interrupted in step {running.migration_id} (RUNNING{since}, no migrate_phase "
        f"running): rerun `migrate_phase {rerun}` to finish it, then deploy"
    )


def _restore_unfinished() -> bool:
    """A ``rollback --restore`` left its restore undone (its steps are planned only with ``--restore``); its
    check refusing the backup changed nothing, and leaves nothing to finish."""
    kinds = RollbackPhase().kinds
    changing = [kind for kind in RollbackPhase.RESTORE_KINDS if not kinds[kind].rerunnable]
    restore_steps = MigrationRecord.objects.filter(phase=RollbackPhase.name, step__in=changing)
    return restore_steps.latest_attempts().exclude(status=Status.COMPLETED).exists()


def half_switched() -> str | None:
    """A scope whose online cutover failed or was interrupted while it is migrated online."""
    records = (
        MigrationRecord.objects.of(CutoverPhase.ARCHIVE_LEGACY, CutoverPhase.ARCHIVE_AUTH)
        .filter(status__in=[Status.FAILED, Status.RUNNING])
        .latest_attempts()
        .order_by("id")
        .only("tenant_id", "step", "status")
    )
    for record in records:
        scope = tenant_schema_name(record.tenant_id) if record.tenant_id else get_config().legacy_auth_schema
        if online.is_online(scope):
            return (
                f"the online cutover of {scope} is {record.status.lower()} half way: rerun `migrate_phase cutover` "
                "(or `migrate_phase rollback`), then deploy"
            )
    return None


def first_few(names: list[str], shown: int = 3) -> str:
    """The first names for a one-line reason; " and more" when there are others."""
    return ", ".join(names[:shown]) + (" and more" if len(names) > shown else "")


def constraints_left_dropped() -> str | None:
    """A table whose indexes or foreign keys a copy dropped and did not rebuild (its step failed between
    the two): a deploy's index change would be undone, or made twice, when the rerun rebuilds them."""
    tables = constraints.tables_with_deferred()
    if not tables:
        return None
    shown = first_few([f"{schema}.{table}" for schema, table in tables])
    return (
        f"the indexes and foreign keys of {len(tables)} table(s) are dropped, not rebuilt ({shown}: their copy "
        "stopped half way): rerun `migrate_phase data` to rebuild them, then deploy"
    )


def deploy_verdict(report: StatusReport | None, holders: list[LockHolder] | None = None) -> DeployVerdict:
    """Safe to run ``migrate_schemas`` now: no phase changes schemas (running, or interrupted half way), no
    tenant is half switched by an online cutover, every registered tenant's schema exists, and the last
    ``migrate_schemas`` migrated every tenant schema. ``report`` None: nothing recorded yet."""
    holders = lock_holders() if holders is None else holders
    if report is not None and report.missing_schemas:
        missing = report.missing_schemas
        return DeployVerdict(
            False,
            f"{len(missing)} registered tenant schema(s) missing: {', '.join(missing)}; restore the schema "
            "or delete its registry row (public.tenants), then deploy",
        )
    reason = ddl_in_progress(holders, tracked=report is not None)
    if reason is None and report is not None:
        reason = half_switched()
    if reason is None and report is not None:
        reason = constraints_left_dropped()
    if reason is not None:
        return DeployVerdict(False, reason)
    if report is not None and report.deploy_failures:
        failed = report.deploy_failures
        first, why = next(iter(failed.items()))
        return DeployVerdict(
            False,
            f"the last migrate_schemas failed in {len(failed)} tenant schema(s): {', '.join(failed)} "
            f"({first}: {why}); fix the cause and rerun migrate_schemas",
        )
    verdict = "safe to deploy: no phase changes schemas, every tenant schema is in place"
    if report is not None and report.synced:
        verdict += (
            "; online window open: a change that would break the two-way sync (a synced column removed, renamed "
            "or retyped, a NOT NULL column without a database default) is refused whole until `migrate_phase finalize`"
        )
    if report is not None and report.behind:
        behind = report.behind
        verdict += (
            f"; {len(behind)} schema(s) lack migrations of this release ({first_few(behind)}): run migrate_schemas"
        )
    return DeployVerdict(True, verdict)


def _rolled_back() -> bool:
    """The latest attempts of rollback's steps all completed, and no step of phases 2-6 started since."""
    latest = MigrationRecord.objects.filter(phase=RollbackPhase.name).latest_attempts()
    found = latest.aggregate(done=Max("completed_at"))
    if found["done"] is None or latest.exclude(status=Status.COMPLETED).exists():
        return False
    # Phases after which a rollback no longer stands: one of their steps started since it.
    redone = [p.name for p in phase_registry.ORDERED if p.number and p.number >= 2]
    return not MigrationRecord.objects.filter(phase__in=redone, started_at__gt=found["done"]).exists()


def _failed(report: StatusReport) -> bool:
    """A step's latest attempt failed (phases 1-6, rollback, finalize) or was left RUNNING by a run that is gone."""
    if report.failures:
        return True
    return (
        MigrationRecord.objects.exclude(phase=DEPLOY.phase)
        .filter(
            status__in=[Status.FAILED, Status.RUNNING],
            phase__in=[*(p.name for p in phase_registry.ORDERED), *ddl_phases()],
        )
        .latest_attempts()
        .exists()
    )


def migration_state(report: StatusReport | None, holders: list[LockHolder] | None = None) -> str:
    """The migration's state, the first that applies:

    - ``not started``: nothing recorded (no tracking tables, or no attempt of a step of phases 1-6);
    - ``running``: a ``migrate_phase`` holds the migrator lock now;
    - ``rolled back``: rollback's latest run completed and no step of phases 2-6 started since;
    - ``failed``: the latest attempt of a step of phases 1-6, rollback or finalize failed, or was left
      RUNNING by a run that is gone (interrupted);
    - ``online window open``: online capture is installed (``data --online`` ran) or legacy and new tables
      are in two-way sync, and ``finalize`` has not ended it yet;
    - ``complete``: every cell of phases 1-6 is done (missing schemas and failed deploys do not change
      the state; they fail ``status --check`` and the deploy gate);
    - ``running`` otherwise: started and not finished, the next phase is still to run.
    """
    if (
        report is None
        or not MigrationRecord.objects.filter(phase__in=[p.name for p in phase_registry.ORDERED]).exists()
    ):
        return NOT_STARTED
    holders = lock_holders() if holders is None else holders
    if holders:
        return RUNNING
    if _rolled_back():
        return ROLLED_BACK
    if _failed(report):
        return FAILED
    if capture.captured_scopes() or twoway.synced_scopes():
        return ONLINE_WINDOW_OPEN
    if report.cells_complete:
        return COMPLETE
    return RUNNING


def gate_document(report: StatusReport | None) -> dict[str, object]:
    """``state`` and ``deploy_check`` of ``status --format json``."""
    holders = lock_holders()
    verdict = deploy_verdict(report, holders)
    return {
        "state": migration_state(report, holders),
        "deploy_check": {"safe": verdict.safe, "reason": verdict.reason},
    }
