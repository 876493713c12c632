"""Runs a phase: plan -> skip what is done -> apply step by step -> record each step after it succeeded.

Modelled on Django's ``MigrationExecutor``: the runner never prints; it reports through the
``on_event`` callback, and the command decides how to show it. Phase-wide steps run in plan order;
a run of consecutive tenant steps runs per tenant, ``jobs`` tenants at a time, and a failing tenant
stops only itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import groupby

import psycopg
from django.db import DatabaseError, connection
from django.utils import timezone

from migrator.core.context import MigrationContext
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase
from migrator.core.steps import Event, SizedTask, Step, StepReporter, StepResult
from migrator.engine import recording, tracking
from migrator.engine.failures import database_error_line, recover_connection
from migrator.engine.pool import WorkPool, run_in_order
from migrator.engine.ranges import run_ranges
from migrator.engine.recording import StepEnd
from migrator.models import Status
from migrator.step_ref import Target
from tenants.models import MigrationState

logger = logging.getLogger("migrator.runner")

EventCallback = Callable[[Event], None]


@dataclass
class PhaseOutcome:
    phase: str
    planned: int = 0
    completed: list[Step] = field(default_factory=list)
    failed: list[tuple[Step, str]] = field(default_factory=list)
    results: dict[str, StepResult] = field(default_factory=dict)
    elapsed: float = 0.0
    rows_moved: int = 0  # rows written by the completed steps that move rows (copies)
    not_started: int = 0  # steps left as they were because a stop was asked for (SIGINT, SIGTERM)

    @property
    def ok(self) -> bool:
        return not self.failed


def pending_steps(phase: Phase, ctx: MigrationContext) -> list[Step]:
    """The phase's plan minus the steps whose latest attempt is COMPLETED (unless the phase asks for a rerun)."""
    steps = phase.plan(ctx)
    if phase.always_rerun:
        return steps
    latest = tracking.latest_states(phase.name)
    return [s for s in steps if s.rerun or (row := latest.get(s.key)) is None or row.status != Status.COMPLETED]


def _tenants_of(argument: object) -> list[str]:
    """The tenants of a work item's argument: one tenant id, or a batch of them."""
    return [argument] if isinstance(argument, str) else list(argument) if isinstance(argument, list) else []


class PhaseRunner:
    def __init__(
        self,
        ctx: MigrationContext,
        on_event: EventCallback = lambda event: None,
        still_locked: Callable[[], None] = lambda: None,
    ) -> None:
        """``still_locked()`` raises :class:`LockLost` once the run no longer holds the migrator lock;
        it is checked before every step and at every batch of a copy."""
        self.ctx = ctx
        self.on_event = on_event
        self.still_locked = still_locked
        self._pool: WorkPool | None = None  # while tenants run on --jobs threads: shares ranges among them
        self._stopped_lock = threading.Lock()  # the --jobs threads count the steps a stop left

    def run(self, phase: Phase, steps: list[Step] | None = None) -> PhaseOutcome:
        """Apply ``steps`` (default: the pending ones). The caller holds the migrator lock."""
        started = time.monotonic()
        tracking.close_interrupted(phase.name)
        steps = pending_steps(phase, self.ctx) if steps is None else steps
        outcome = PhaseOutcome(phase.name, planned=len(steps))
        self.on_event(Event("phase_start", phase.name, count=len(steps)))
        records = tracking.ensure_pending(steps, tracking.latest_states(phase.name, [s.key for s in steps]))
        position = 0
        for is_tenant_run, grouped in groupby(steps, key=lambda s: s.tenant_id is not None):
            group = list(grouped)
            if is_tenant_run:
                self._run_tenants(phase, group, records, outcome, position, len(steps))
            else:
                for offset, step in enumerate(group):
                    if self._stop_asked(outcome, len(group) - offset):
                        break
                    end = self._run_step(phase, step, records[step.key], outcome, position + offset, len(steps))
                    recording.record([end])
                    if not outcome.ok and not phase.continue_after_failure:
                        break
            position += len(group)
            if not outcome.ok and not phase.continue_after_failure:
                break
        outcome.elapsed = time.monotonic() - started
        self.on_event(Event("phase_end", phase.name, elapsed=outcome.elapsed, count=len(steps)))
        return outcome

    def _stop_asked(self, outcome: PhaseOutcome, steps_left: int) -> bool:
        """A stop was asked for: the ``steps_left`` steps about to start are left as they are (counted)."""
        if not self.ctx.options.stop.is_set():
            return False
        with self._stopped_lock:
            outcome.not_started += steps_left
        return True

    def _run_tenants(
        self,
        phase: Phase,
        steps: list[Step],
        records: dict[str, tracking.StepRow],
        outcome: PhaseOutcome,
        position: int,
        count: int,
    ) -> None:
        by_tenant: dict[str, list[tuple[int, Step]]] = {}
        for offset, step in enumerate(steps):
            by_tenant.setdefault(step.tenant_id or "", []).append((position + offset, step))

        blocked = self._tenants_not_ready(phase, list(by_tenant))

        def run_tenant(tenant_id: str) -> None:
            if self._stop_asked(outcome, len(by_tenant[tenant_id])):
                return  # not refused either: a stopped run records nothing more
            try:
                if tenant_id in blocked:
                    index, step = by_tenant[tenant_id][0]
                    self._refuse_step(phase, step, records[step.key], blocked[tenant_id], outcome, index, count)
                    return
                self._run_tenant_steps(phase, tenant_id, by_tenant[tenant_id], records, outcome, count)
            finally:
                if self.ctx.jobs > 1:
                    connection.close()  # worker threads each own a connection; don't leak it

        def run_tenants(tenant_ids: list[str]) -> None:
            """Several tenants' rerunnable steps inside one of the phase's batches, each tenant recorded on its own."""
            if self._stop_asked(outcome, sum(len(by_tenant[t]) for t in tenant_ids)):
                return
            try:
                with phase.tenant_batch(self.ctx, tenant_ids) as batch:
                    for tenant_id in tenant_ids:
                        self._run_tenant_steps(phase, tenant_id, by_tenant[tenant_id], records, outcome, count, batch)
            finally:
                if self.ctx.jobs > 1:
                    connection.close()

        work: list[tuple[Callable[..., None], object]] = [(run_tenant, t) for t in by_tenant]
        kind = phase.kinds.get(steps[0].kind)
        one_kind = all(len(items) == 1 and items[0][1].kind == steps[0].kind for items in by_tenant.values())
        if phase.tenants_per_batch > 1 and all(rerunnable(phase, step) for step in steps):
            ready = [t for t in by_tenant if t not in blocked]
            size = phase.tenants_per_batch
            work = [(run_tenant, t) for t in by_tenant if t in blocked]
            work += [(run_tenants, ready[i : i + size]) for i in range(0, len(ready), size)]
        elif kind is not None and kind.apply_batch is not None and one_kind:
            ready = [t for t in by_tenant if t not in blocked]
            size = max(1, kind.batch_size)
            work = [(run_tenant, t) for t in by_tenant if t in blocked]
            work += [
                (self._batch_runner(phase, by_tenant, records, outcome, count, run_tenant), ready[i : i + size])
                for i in range(0, len(ready), size)
            ]

        # The largest tenants first: a large tenant started last would be the one the phase waits for.
        weights = phase.tenant_weights(self.ctx, list(by_tenant))
        if weights:
            work.sort(key=lambda item: -sum(weights.get(t, 0) for t in _tenants_of(item[1])))
        if self.ctx.jobs <= 1:
            for run, argument in work:
                run(argument)
            return
        pool = WorkPool(self.ctx.jobs, on_thread_exit=lambda: connection.close())
        self._pool = pool
        try:
            pool.run([partial(run, argument) for run, argument in work])
        finally:
            self._pool = None

    def _batch_runner(
        self,
        phase: Phase,
        by_tenant: dict[str, list[tuple[int, Step]]],
        records: dict[str, tracking.StepRow],
        outcome: PhaseOutcome,
        count: int,
        run_tenant: Callable[[str], None],
    ) -> Callable[[list[str]], None]:
        """Runs a batch of tenants' single steps through their kind's ``apply_batch`` (one transaction for
        many small steps), then verifies each step on its own and records those that passed, with
        their tenants' new states, as each tenant's last step is (see ``engine/recording.py``); the
        steps the batch left out or that failed verification run one by one as usual (and report
        their own errors)."""

        def run_batch(tenant_ids: list[str]) -> None:
            if self._stop_asked(outcome, len(tenant_ids)):
                return
            try:
                self.still_locked()
                items = [by_tenant[t][0] for t in tenant_ids]
                batch = [step for _index, step in items]
                kind = phase.kinds[batch[0].kind]
                assert kind.apply_batch is not None
                # Steps that can simply run again write no RUNNING row (as one by one): a run killed
                # before their tenant's end leaves them PENDING, and the next run does them again.
                can_rerun = rerunnable(phase, batch[0])
                started_at = timezone.now()
                if not can_rerun:
                    started_at = recording.start_many([records[step.key] for step in batch])
                for index, step in items:
                    self.on_event(Event("step_start", phase.name, step, index=index, count=count))
                atomic_depth = len(connection.atomic_blocks)
                started = time.monotonic()
                try:
                    results = kind.apply_batch(self.ctx, batch)
                except (MigrationError, DatabaseError, psycopg.Error):
                    logger.info(
                        "batch of %d %s steps failed; running them one by one", len(batch), phase.name, exc_info=True
                    )
                    recover_connection(atomic_depth)
                    results = {}
                elapsed = (time.monotonic() - started) / len(batch)
                done: list[tuple[int, Step, StepEnd]] = []
                leftover: list[str] = []
                for tenant_id, (index, step) in zip(tenant_ids, items, strict=True):
                    result = results.get(step.key)
                    if result is None or phase.verify(self.ctx, step, result):
                        leftover.append(tenant_id)
                    else:
                        end = StepEnd(records[step.key].pk, Status.COMPLETED, result, None, started_at, timezone.now())
                        done.append((index, step, end))
                # Each tenant's step is its last: recorded with its state. Steps that can run again are
                # recorded tenant by tenant, in order, as one by one (a tenant whose write waits, on its
                # registry row say, holds back no other); the others, started together, end together.
                state = phase.tenant_state_on_success
                for group in [[item] for item in done] if can_rerun else [done]:
                    recording.record(
                        [end for _index, _step, end in group],
                        {step.tenant_id or "": state for _index, step, _end in group} if state else None,
                    )
                for index, step, end in done:
                    self._account(phase, step, end, outcome, elapsed, index, count)
                for tenant_id in leftover:
                    run_tenant(tenant_id)
            finally:
                if self.ctx.jobs > 1:
                    connection.close()

        return run_batch

    @staticmethod
    def _tenants_not_ready(phase: Phase, tenant_ids: list[str]) -> dict[str, str]:
        """Tenants that have not completed the phase this one builds on, with the reason."""
        if phase.requires is None:
            return {}
        done = {
            tenant_id: statuses == {Status.COMPLETED}
            for (_phase, tenant_id), statuses in tracking.latest_statuses([phase.requires]).items()
            if tenant_id
        }
        return {
            tenant_id: f"phase {phase.requires} is not complete for tenant {tenant_id}; "
            f"run `migrate_phase {phase.requires}` first"
            for tenant_id in tenant_ids
            if not done.get(tenant_id)
        }

    def _refuse_step(
        self,
        phase: Phase,
        step: Step,
        record: tracking.StepRow,
        reason: str,
        outcome: PhaseOutcome,
        index: int,
        count: int,
    ) -> None:
        """Record a step that must not start (its tenant is not ready) as FAILED, without running it."""
        now = timezone.now()
        end = StepEnd(record.pk, Status.FAILED, None, reason, now, now)
        recording.record([end])
        self._account(phase, step, end, outcome, 0.0, index, count)

    def _run_tenant_steps(
        self,
        phase: Phase,
        tenant_id: str,
        steps: list[tuple[int, Step]],
        records: dict[str, tracking.StepRow],
        outcome: PhaseOutcome,
        count: int,
        batch: object = None,
    ) -> None:
        """A tenant's steps one by one (``batch``: what the phase read for the batch of tenants it runs
        in, handed to each step). A step that cannot simply run again writes a RUNNING row and is
        recorded as soon as it ends; a step that can (``StepKind.rerunnable``: grants, checks, a
        validation) writes no RUNNING row and is recorded at the end of the tenant, with the tenant's
        last step to run and its new state, in one statement (see ``engine/recording.py``). A run
        killed before that leaves them as they were (PENDING, or as the previous attempt left them):
        they run again."""
        with_state: list[StepEnd] = []
        state: str | None = None
        last = len(steps) - 1
        if self._stop_asked(outcome, len(steps)):
            return  # before the tenant's context: its locks and catalog read are for steps that run
        with phase.tenant_context(self.ctx, tenant_id) as tenant:
            try:
                for position, (index, step) in enumerate(steps):
                    if self._stop_asked(outcome, len(steps) - position):
                        break  # the tenant's state stays as it was: its next run resumes it
                    can_rerun = rerunnable(phase, step)
                    record = records[step.key]
                    end = self._run_step(phase, step, record, outcome, index, count, not can_rerun, batch, tenant)
                    if not end.completed:
                        with_state.append(end)
                        state = MigrationState.FAILED
                        break
                    if can_rerun or position == last:
                        with_state.append(end)
                    else:
                        recording.record([end])
                else:
                    state = phase.tenant_state_on_success
            finally:
                # Also when the run stops mid-tenant (LockLost): what ran is recorded.
                recording.record(with_state, {tenant_id: state} if state else None)

    def _run_step(
        self,
        phase: Phase,
        step: Step,
        record: tracking.StepRow,
        outcome: PhaseOutcome,
        index: int,
        count: int,
        running_row: bool = True,
        batch: object = None,
        tenant: object = None,
    ) -> StepEnd:
        """Run one step and return how it ended, for the caller to record (``running_row``: mark the
        step RUNNING first; a step that can simply run again does without; ``batch``, ``tenant``:
        see ``StepReporter``)."""
        self.still_locked()  # a run that lost the lock starts nothing more (LockLost ends the run)
        started_at = recording.start(record).started_at if running_row else None
        started_at = started_at or timezone.now()
        atomic_depth = len(connection.atomic_blocks)
        started = time.monotonic()
        self.on_event(Event("step_start", phase.name, step, index=index, count=count))

        def progress(done: int, total: int | None, unit: str = "rows") -> None:
            self.on_event(
                Event(
                    "step_progress",
                    phase.name,
                    step,
                    done=done,
                    total=total,
                    elapsed=time.monotonic() - started,
                    index=index,
                    count=count,
                    unit=unit,
                )
            )

        reporter = StepReporter(
            progress=progress,
            expected=lambda rows: tracking.save_expected(record.pk, rows),
            checkpoint=lambda key, rows: tracking.save_checkpoint(record.pk, key, rows),
            fence=self.still_locked,
            # A large table's ranges run on whichever connection of the run is free.
            ranges=lambda kind, plan, work, resume, part="": run_ranges(
                replace(step, target=Target(part)) if part else step,
                kind,
                plan,
                work,
                resume,
                progress,
                self._share_as_is,
                self.still_locked,
            ),
            parallel=self._share,
            batch=batch,
            tenant=tenant,
        )
        result: StepResult | None = None
        try:
            result = phase.apply(self.ctx, step, reporter)
            problems = phase.verify(self.ctx, step, result)
            error = "; ".join(problems) if problems else None
        except MigrationError as exc:
            error = str(exc)
        except (DatabaseError, psycopg.Error) as exc:
            # Usually the data's fault (a missing column, a constraint): one line is the message;
            # the traceback is there for SALESFLOW_LOG_LEVEL=INFO.
            logger.info("step %s failed", step.key, exc_info=True)
            error = f"database error: {database_error_line(exc)}"
        except Exception as exc:  # record every failure; the traceback goes to the log
            logger.exception("step %s failed unexpectedly", step.key)
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            recover_connection(atomic_depth)
        status = Status.COMPLETED if error is None else Status.FAILED
        end = StepEnd(record.pk, status, result, error, started_at, timezone.now())
        self._account(phase, step, end, outcome, time.monotonic() - started, index, count)
        return end

    def _account(
        self, phase: Phase, step: Step, end: StepEnd, outcome: PhaseOutcome, elapsed: float, index: int, count: int
    ) -> None:
        """A step's end in the phase's outcome and as an event, whichever way it ran."""
        if end.completed:
            outcome.completed.append(step)
            outcome.results[step.key] = end.result or StepResult()
            if end.result is not None and phase.moves_rows(step):
                outcome.rows_moved += end.result.rows_copied or 0
            event = Event(
                "step_success", phase.name, step, result=end.result, elapsed=elapsed, index=index, count=count
            )
        else:
            outcome.failed.append((step, end.error or ""))
            event = Event(
                "step_failure",
                phase.name,
                step,
                result=end.result,
                error=end.error,
                elapsed=elapsed,
                index=index,
                count=count,
            )
        self.on_event(event)

    def _share_as_is(self, tasks: list[SizedTask]) -> None:
        (self._pool.share if self._pool is not None else run_in_order)(tasks)

    def _share(self, tasks: list[SizedTask]) -> None:
        """``tasks`` on whichever connection of the run is free (see ``StepReporter.parallel``)."""

        def recovering(task: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                self.still_locked()
                atomic_depth = len(connection.atomic_blocks)
                try:
                    task()
                except BaseException:
                    recover_connection(atomic_depth)
                    raise

            return run

        self._share_as_is([(size, recovering(task)) for size, task in tasks])


def rerunnable(phase: Phase, step: Step) -> bool:
    """Whether doing ``step`` (a tenant's) again changes nothing (``StepKind.rerunnable``)."""
    kind = phase.kinds.get(step.kind)
    return kind is not None and kind.rerunnable
