"""The interface every phase implements: plan, apply one step, verify that step."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from migrator.core.context import MigrationContext, TenantRef
from migrator.core.errors import MigrationError
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.step_ref import NO_TARGET, Target

ApplyStep = Callable[[MigrationContext, Step, StepReporter], StepResult]
ApplyBatch = Callable[[MigrationContext, list[Step]], dict[str, StepResult]]
VerifyStep = Callable[[MigrationContext, Step, StepResult], list[str]]


def no_problems(ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
    return []


@dataclass(frozen=True)
class StepKind:
    """One kind of step of a phase: ``apply`` does it, ``verify`` checks its outcome in the database
    and returns the problems found (empty: fine). ``moves_rows``: its result's ``rows_copied`` are
    rows it wrote (summed in the phase's summary), not rows it counted.

    ``apply_batch`` (optional, for tenant steps of one kind, one per tenant): does the steps of up to
    ``batch_size`` tenants at once and returns the results of those it did, by step key; the engine
    runs the others with ``apply``, and verifies and records each step on its own either way.

    ``rerunnable`` (grants, checks, a validation after the copies): doing a tenant's step of this
    kind again changes nothing, so it writes no RUNNING row and its record is written with its
    tenant's new state, in one statement at the end of the tenant; a run killed before that leaves it
    as it was, and the next run does it again. The one flag for it: a phase whose tenant steps are
    all rerunnable may run its tenants in batches (``tenants_per_batch``). Phase-wide steps are
    recorded as each ends, whatever the flag."""

    apply: ApplyStep
    verify: VerifyStep = no_problems
    moves_rows: bool = False
    apply_batch: ApplyBatch | None = None
    batch_size: int = 1
    rerunnable: bool = False


class Phase(ABC):
    """A phase of the migration plan, and the only place of its facts.

    ``plan`` reads the catalog and changes nothing; each planned step names one of the phase's
    ``step_kinds``, whose ``apply`` does the step and whose ``verify`` checks it. A step is recorded
    COMPLETED only when ``verify`` returns nothing.

    Facts the rest of the tool reads from here (and nowhere else): ``number`` (position in `all`;
    None for commands outside the ordered plan), ``name``, ``requires`` (the earlier phase a tenant
    must have completed), ``tenant_state_on_success`` (the registry state it sets), and whether a
    rollback (``undone_by_rollback``) or a restore of the backup (``undone_by_restore``) undoes it.
    ``tests/migrator/phases/test_phase_registry.py`` checks that these facts agree with each other.
    """

    name: ClassVar[str]
    number: ClassVar[int | None] = None
    estimate: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # The registry state a tenant reaches when all of its steps in this phase completed.
    tenant_state_on_success: ClassVar[str | None] = None
    # Steps of this phase change data irreversibly and need confirmation (or --noinput).
    asks_confirmation: ClassVar[bool] = False
    # Steps run on every invocation instead of being skipped once COMPLETED (rollback).
    always_rerun: ClassVar[bool] = False
    # A tenant takes part only once it completed this earlier phase (e.g. no grants before its data).
    requires: ClassVar[str | None] = None
    # Keep going after a failed step (checks that report everything they find, like verify).
    continue_after_failure: ClassVar[bool] = False
    # For phases whose tenant steps are all of rerunnable kinds (``StepKind.rerunnable``): tenants run
    # this many at a time inside one ``tenant_batch`` (the phase reads what its checks need for all of
    # them at once); each tenant is still recorded on its own.
    tenants_per_batch: ClassVar[int] = 1
    # What rollback undoes: its steps become ROLLED_BACK (and run again next time).
    undone_by_rollback: ClassVar[bool] = False
    undone_by_restore: ClassVar[bool] = False
    # False: every step it plans is a tenant's, and `status` shows no phase-wide cell for it (one
    # that no step could ever fill would keep the deploy gate shut).
    has_phase_wide_steps: ClassVar[bool] = True
    # Whether the phase changes schemas (DDL): its run holds the schema-change lock that deploys take
    # (tenants/schema_lock.py). Phases that only read or write rows leave deploys free.
    changes_schemas: ClassVar[bool] = True
    # Whether its steps create, drop or rename tables, indexes or constraints in the tenant and service
    # schemas (a copy drops and rebuilds indexes): the deploy gate holds deploys back while one of its
    # steps runs or was left RUNNING. Registering, granting, reading or writing rows does not count.
    alters_tables: ClassVar[bool] = False

    @abstractmethod
    def plan(self, ctx: MigrationContext) -> list[Step]: ...

    @abstractmethod
    def step_kinds(self) -> Mapping[str, StepKind]:
        """Every kind of step this phase plans, with how to apply and verify it."""

    @cached_property
    def kinds(self) -> Mapping[str, StepKind]:
        return self.step_kinds()

    @property
    def scales_with_rows(self) -> bool:
        """Some kind of its steps writes rows (copies): its time grows with the legacy rows, the other
        phases' with the number of tenants."""
        return any(kind.moves_rows for kind in self.kinds.values())

    def apply(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        return self._kind(step).apply(ctx, step, reporter)

    def verify(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        return self._kind(step).verify(ctx, step, result)

    def moves_rows(self, step: Step) -> bool:
        return self._kind(step).moves_rows

    def _kind(self, step: Step) -> StepKind:
        try:
            return self.kinds[step.kind]
        except KeyError:
            raise MigrationError(f"phase {self.name} has no step kind {step.kind!r}") from None

    def step(
        self,
        kind: str,
        description: str,
        tenant_id: str | None = None,
        target: Target | str = NO_TARGET,
        sql: tuple[str, ...] = (),
        destructive: bool = False,
    ) -> Step:
        """A step of this phase; a ``target`` given as text is a plain name (see :class:`Target`)."""
        if kind not in self.kinds:
            raise ValueError(f"phase {self.name} has no step kind {kind!r}")
        if tenant_id is None and not self.has_phase_wide_steps:
            raise ValueError(f"phase {self.name} declares no phase-wide steps, and {kind!r} names no tenant")
        on = target if isinstance(target, Target) else Target(target)
        return Step(self.name, self.number, kind, description, tenant_id, on, sql, destructive)

    def tenant_step(
        self,
        kind: str,
        description: str,
        tenant: TenantRef,
        target: Target | str | None = None,
        sql: tuple[str, ...] = (),
        destructive: bool = False,
    ) -> Step:
        """A step of ``tenant``'s, on its schema (or on ``target``, a table in it)."""
        return self.step(
            kind, description, tenant.tenant_id, tenant.schema if target is None else target, sql, destructive
        )

    def tenant_batch(self, ctx: MigrationContext, tenant_ids: list[str]) -> AbstractContextManager[object]:
        """Wraps a batch of up to ``tenants_per_batch`` tenants' steps (rerunnable kinds only): the place
        to read, in a few queries, what the steps of all of them would each ask for. What it yields is
        handed to each of their steps as ``StepReporter.batch``; a step that gets none (its tenant runs
        alone) reads the same for a batch of its tenant alone."""
        return nullcontext()

    def tenant_context(self, ctx: MigrationContext, tenant_id: str) -> AbstractContextManager[object]:
        """Wraps one tenant's steps and the write of their records, e.g. one
        schema context for all of them instead of a switch per step. What it yields is handed to
        each of the tenant's steps as ``reporter.tenant``."""
        return nullcontext()

    def tenant_weights(self, ctx: MigrationContext, tenant_ids: list[str]) -> dict[str, float]:
        """How much work each tenant's steps are, roughly (e.g. estimated rows): with ``--jobs`` the
        heaviest tenants start first. Empty: the tenants run in plan order."""
        return {}

    def check_ready(self, ctx: MigrationContext, steps: list[Step]) -> None:  # noqa: B027 (a hook: nothing by default)
        """Called under the lock with the steps a run would apply (none: not called), before any of
        them starts and before the confirmation: raise :class:`MigrationError` to refuse the whole
        run. The runner's own check (``requires``, per tenant) sees only tenants' steps and refuses
        tenant by tenant; a phase that must not start at all while an earlier one is unfinished (its
        phase-wide steps included) says so here."""

    def refuse_options(self, ctx: MigrationContext) -> None:  # noqa: B027 (a hook: nothing by default)
        """Raise MigrationError for options this phase cannot honour together, before anything changes
        (a recovery, an exclusion, a plan)."""

    def recover(self, ctx: MigrationContext) -> str | None:
        """Called under the lock before the tracking tables are bootstrapped: repair what a killed run
        of this phase left behind that bootstrapping could not cope with. Returns a notice, or None."""
        return None

    def confirmation_question(self, ctx: MigrationContext, steps: list[Step]) -> str:
        return f"Phase {self.name} will change data irreversibly ({len(steps)} steps). Continue?"
