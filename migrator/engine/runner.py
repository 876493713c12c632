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
from datetime import datetime
from functools import partial
from itertools import groupby

import psycopg
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from migrator.core.context import MigrationContext
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase
from migrator.core.steps import (
    Event,
    KeyRange,
    RangeResults,
    RangeWork,
    SizedTask,
    Step,
    StepReporter,
    StepResult,
)
from migrator.engine import tracking
from migrator.engine.pool import WorkPool, run_in_order
from migrator.models import Status

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


def database_error_line(exc: BaseException) -> str:
    """The server's message on one line, with its DETAIL (the key or row at fault) when it has one."""
    cause = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    diag = getattr(cause, "diag", None)
    message = getattr(diag, "message_primary", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    detail = getattr(diag, "message_detail", None)
    return " ".join(f"{message} ({detail})".split()) if detail else message


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
                    self._run_step(phase, step, records[step.key], outcome, position + offset, len(steps))
                    if not outcome.ok and not phase.continue_after_failure:
                        break
            position += len(group)
            if not outcome.ok and not phase.continue_after_failure:
                break
        outcome.elapsed = time.monotonic() - started
        self.on_event(Event("phase_end", phase.name, elapsed=outcome.elapsed, count=len(steps)))
        return outcome

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
            try:
                with phase.tenant_batch(self.ctx, tenant_ids):
                    for tenant_id in tenant_ids:
                        self._run_tenant_steps(phase, tenant_id, by_tenant[tenant_id], records, outcome, count)
            finally:
                if self.ctx.jobs > 1:
                    connection.close()

        work: list[tuple[Callable[..., None], object]] = [(run_tenant, t) for t in by_tenant]
        kind = phase.kinds.get(steps[0].kind)
        one_kind = all(len(items) == 1 and items[0][1].kind == steps[0].kind for items in by_tenant.values())
        if phase.tenant_steps_rerunnable and phase.tenants_per_batch > 1:
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
        many small steps), then verifies and records each step on its own; the steps the batch left out
        or that failed verification run one by one as usual (and report their own errors)."""

        def run_batch(tenant_ids: list[str]) -> None:
            try:
                self.still_locked()
                items = [by_tenant[t][0] for t in tenant_ids]
                batch = [step for _index, step in items]
                kind = phase.kinds[batch[0].kind]
                assert kind.apply_batch is not None
                # Steps that can simply run again write no RUNNING row (as in _run_tenant_steps): a run
                # killed before their tenant's end leaves them PENDING, and the next run does them again.
                rerunnable = phase.tenant_steps_rerunnable
                started_at = timezone.now()
                if not rerunnable:
                    tracking.start_many([records[step.key] for step in batch])
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
                    self._recover_connection(atomic_depth)
                    results = {}
                elapsed = (time.monotonic() - started) / len(batch)
                done: list[tuple[int, Step, StepResult]] = []
                leftover: list[str] = []
                for tenant_id, (index, step) in zip(tenant_ids, items, strict=True):
                    result = results.get(step.key)
                    if result is None or phase.verify(self.ctx, step, result):
                        leftover.append(tenant_id)
                    else:
                        done.append((index, step, result))
                # The steps' COMPLETED rows and their tenants' new state commit together: a run killed
                # between the two would leave the steps done (never run again) and the tenants behind.
                if rerunnable:  # tenant by tenant, in order, as the one-by-one way records them
                    state = phase.tenant_state_on_success
                    for _index, step, result in done:
                        tracking.finish_many(
                            [
                                tracking.Finished(
                                    records[step.key].pk, Status.COMPLETED, result, None, started_at, timezone.now()
                                )
                            ],
                            tenant_state=(step.tenant_id or "", state) if state else None,
                        )
                else:
                    with transaction.atomic():
                        tracking.complete_many([(records[step.key], result) for _index, step, result in done])
                        if done and phase.tenant_state_on_success:
                            from tenants.models import Tenant

                            Tenant.objects.filter(tenant_id__in=[step.tenant_id for _i, step, _r in done]).update(
                                migration_state=phase.tenant_state_on_success
                            )
                for index, step, result in done:
                    outcome.completed.append(step)
                    outcome.results[step.key] = result
                    self.on_event(
                        Event(
                            "step_success", phase.name, step, result=result, elapsed=elapsed, index=index, count=count
                        )
                    )
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
        done: dict[str, bool] = {}
        for record in tracking.latest_states(phase.requires).values():
            if record.tenant_id:
                done[record.tenant_id] = done.get(record.tenant_id, True) and record.status == Status.COMPLETED
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
        tracking.finish(tracking.start(record), Status.FAILED, None, reason)
        outcome.failed.append((step, reason))
        self.on_event(Event("step_failure", phase.name, step, error=reason, elapsed=0.0, index=index, count=count))

    def _run_tenant_steps(
        self,
        phase: Phase,
        tenant_id: str,
        steps: list[tuple[int, Step]],
        records: dict[str, tracking.StepRow],
        outcome: PhaseOutcome,
        count: int,
    ) -> None:
        """A tenant's steps one by one, each recorded as it ends; except those that can simply run again
        (every tenant step of a phase with ``tenant_steps_rerunnable``: grants, checks; or of a
        rerunnable kind: a validation), which write no RUNNING row and are recorded with the tenant's
        new state in one statement at the end of the tenant (see StepKind). A run killed before that
        leaves them as they were (PENDING, or as the previous attempt left them): they run again.

        The tenant's last step also ends in that statement (with its RUNNING row written as usual
        when it cannot simply run again): its record and the tenant's state commit together."""
        later: list[tracking.Finished] = []
        state: str | None = None
        last = len(steps) - 1
        with phase.tenant_context(self.ctx, tenant_id):
            try:
                for position, (index, step) in enumerate(steps):
                    rerunnable = phase.tenant_steps_rerunnable or phase.kinds[step.kind].rerunnable
                    finished = later if rerunnable or position == last else None
                    running_row = not rerunnable
                    if not self._run_step(phase, step, records[step.key], outcome, index, count, finished, running_row):
                        state = "FAILED"
                        break
                else:
                    state = phase.tenant_state_on_success
            finally:
                # Also when the run stops mid-tenant (LockLost): what ran is recorded.
                if later or state:
                    tracking.finish_many(later, tenant_state=(tenant_id, state) if state else None)

    def _run_step(
        self,
        phase: Phase,
        step: Step,
        record: tracking.StepRow,
        outcome: PhaseOutcome,
        index: int,
        count: int,
        finished: list[tracking.Finished] | None = None,
        running_row: bool | None = None,
    ) -> bool:
        """Run one step and record how it ended; ``finished``: append the record to it instead of
        writing it (the caller writes the batch), and write no RUNNING row either unless
        ``running_row`` (a step that cannot simply run again, recorded later with its tenant's state)."""
        self.still_locked()  # a run that lost the lock starts nothing more (LockLost ends the run)
        if finished is None or running_row:
            record = tracking.start(record)
        started_at = record.started_at if running_row and record.started_at else timezone.now()
        atomic_depth = len(connection.atomic_blocks)
        started = time.monotonic()
        self.on_event(Event("step_start", phase.name, step, index=index, count=count))

        def progress(done: int, total: int | None) -> None:
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
                )
            )

        reporter = StepReporter(
            progress=progress,
            expected=lambda rows: tracking.save_expected(record.pk, rows),
            checkpoint=lambda key, rows: tracking.save_checkpoint(record.pk, key, rows),
            fence=self.still_locked,
            ranges=lambda kind, plan, work, resume, part="": self._run_ranges(
                replace(step, target=part) if part else step, kind, plan, work, resume, progress
            ),
            parallel=self._share,
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
            self._recover_connection(atomic_depth)
        elapsed = time.monotonic() - started
        if error is None:
            self._finish(record, Status.COMPLETED, result, None, started_at, finished)
            outcome.completed.append(step)
            outcome.results[step.key] = result or StepResult()
            if result is not None and phase.moves_rows(step):
                outcome.rows_moved += result.rows_copied or 0
            self.on_event(
                Event("step_success", phase.name, step, result=result, elapsed=elapsed, index=index, count=count)
            )
            return True
        self._finish(record, Status.FAILED, result, error, started_at, finished)
        outcome.failed.append((step, error))
        self.on_event(
            Event(
                "step_failure", phase.name, step, result=result, error=error, elapsed=elapsed, index=index, count=count
            )
        )
        return False

    def _run_ranges(
        self,
        step: Step,
        kind: str,
        plan: Callable[[], list[KeyRange]],
        work: RangeWork,
        resume: bool,
        progress: Callable[[int, int | None], None],
    ) -> RangeResults:
        """A step's ranges (see ``StepReporter.ranges``): the plan an earlier attempt recorded, else
        ``plan()`` recorded now; each range not yet COMPLETED (with ``resume``; else every range) is done
        on whichever connection is free, with a tracking row of its own that its batches' checkpoints
        commit with. A recorded plan is kept even by a step that does all its ranges again (a
        validation): its ranges keep their rows, so none is left behind as an earlier attempt left it."""
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
        done = {r.index: r.rows_done for r in todo} | {
            i: result.rows_copied or 0 for i, (_r, result) in results.items()
        }
        planned = (
            sum(r.rows_planned for r, _row, _status in recorded) if recorded else sum(r.rows_planned for r in todo)
        )
        lock = threading.Lock()

        def range_progress(index: int, rows: int) -> None:
            with lock:
                done[index] = rows
                total = sum(done.values())
            progress(total, planned)

        def task(key_range: KeyRange) -> Callable[[], None]:
            def run() -> None:
                results[key_range.index] = (
                    key_range,
                    self._run_range(key_range, rows[key_range.index], work, range_progress),
                )

            return run

        tasks = [(r.rows_planned, task(r)) for r in todo]
        (self._pool.share if self._pool is not None else run_in_order)(tasks)
        return [results[index] for index in sorted(results)]

    def _share(self, tasks: list[SizedTask]) -> None:
        """``tasks`` on whichever connection of the run is free (see ``StepReporter.parallel``)."""

        def recovering(task: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                self.still_locked()
                atomic_depth = len(connection.atomic_blocks)
                try:
                    task()
                except BaseException:
                    self._recover_connection(atomic_depth)
                    raise

            return run

        shared = [(size, recovering(task)) for size, task in tasks]
        (self._pool.share if self._pool is not None else run_in_order)(shared)

    def _run_range(
        self,
        key_range: KeyRange,
        record: tracking.StepRow,
        work: RangeWork,
        range_progress: Callable[[int, int], None],
    ) -> StepResult:
        """One range on this thread's connection, recorded on its own row; its error is re-raised for
        the step (which fails with it) after the row says FAILED."""
        self.still_locked()
        tracking.start(record)
        atomic_depth = len(connection.atomic_blocks)
        reporter = StepReporter(
            progress=lambda rows, _total: range_progress(key_range.index, rows),
            checkpoint=lambda key, rows: tracking.save_checkpoint(record.pk, key, rows),
            fence=self.still_locked,
        )
        try:
            result = work(key_range, reporter)
        except BaseException as exc:
            self._recover_connection(atomic_depth)
            error = str(exc) if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, DatabaseError | psycopg.Error):
                error = f"database error: {database_error_line(exc)}"
            tracking.finish(record, Status.FAILED, None, error)
            raise
        tracking.finish(record, Status.COMPLETED, result)
        return result

    @staticmethod
    def _finish(
        record: tracking.StepRow,
        status: Status,
        result: StepResult | None,
        error: str | None,
        started_at: datetime,
        finished: list[tracking.Finished] | None,
    ) -> None:
        if finished is None:
            tracking.finish(record, status, result, error)
        else:
            finished.append(tracking.Finished(record.pk, status, result, error, started_at, timezone.now()))

    @staticmethod
    def _recover_connection(atomic_depth: int) -> None:
        """Leave the connection as the step found it, whatever the step left behind.

        Django's schema editor leaves its transaction open when deferred SQL fails, and a killed
        backend leaves a dead connection; either would make recording the failure fail too.
        """
        try:
            while len(connection.atomic_blocks) > atomic_depth:
                leaked = connection.atomic_blocks[-1]
                leaked.__exit__(RuntimeError, RuntimeError("step failed"), None)  # rolls back and pops
        except (DatabaseError, psycopg.Error):
            # The step's own error is the one to report; a connection that cannot even roll back is dropped.
            logger.info("cleaning up after a failed step failed", exc_info=True)
            del connection.atomic_blocks[atomic_depth:]
            if not connection.atomic_blocks:  # nothing of the caller's is open: a fresh connection next time
                connection.in_atomic_block = False
                connection.needs_rollback = False
            connection.close()
            return
        if connection.connection is not None and not connection.in_atomic_block and not connection.is_usable():
            connection.close()
