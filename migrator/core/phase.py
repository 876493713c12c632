"""The interface every phase implements: plan, apply one step, verify that step."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from migrator.core.context import MigrationContext
from migrator.core.steps import Step, StepResult

# progress(done, total): a step reports how far it is (rows, tenants, ...).
Progress = Callable[[int, int | None], None]


class Phase(ABC):
    """A phase of the migration plan.

    ``plan`` reads the catalog and changes nothing; ``apply`` does one step and returns what it did;
    ``verify`` checks that step's outcome in the database and returns the problems found (empty:
    fine). A step is recorded COMPLETED only when ``verify`` returns nothing.
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

    @abstractmethod
    def plan(self, ctx: MigrationContext) -> list[Step]: ...

    @abstractmethod
    def apply(self, ctx: MigrationContext, step: Step, progress: Progress, record_id: int) -> StepResult: ...

    def verify(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        return []

    def step(self, kind: str, description: str, tenant_id: str | None = None, target: str = "",
             sql: tuple[str, ...] = (), destructive: bool = False) -> Step:
        return Step(self.name, kind, description, tenant_id, target, sql, destructive)

    def confirmation_question(self, ctx: MigrationContext, steps: list[Step]) -> str:
        return f"Phase {self.name} will change data irreversibly ({len(steps)} steps). Continue?"
