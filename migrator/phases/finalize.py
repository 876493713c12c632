"""``migrate_phase finalize``: drop the compatibility views an online cutover left, once nothing uses them.

The views keep old application code running after cutover. Dropping one the application still
reads or writes breaks it, so finalize first watches them for ``--observe-seconds``: every
statement through a view scans its probe table (see :mod:`migrator.ops.compat`), and a view whose
counters moved in that window is still in use: finalize refuses, naming the views and the counts.
``--force`` drops them anyway.
"""

from __future__ import annotations

import time

from migrator.core.context import MigrationContext
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.ops import capture, compat


class FinalizePhase(Phase):
    name = "finalize"
    number = None
    summary = "drop the compatibility views of the online cutover once the application no longer uses them"
    # Every finalize looks at the views as they are now.
    always_rerun = True
    asks_confirmation = True

    def plan(self, ctx: MigrationContext) -> list[Step]:
        scopes = sorted({schema for schema, _view in compat.all_compat_views()})
        if ctx.tenant_filter:
            wanted = {f"tenant_{t}" for t in ctx.tenant_filter}
            scopes = [s for s in scopes if s in wanted]
        if not scopes:
            return []
        steps = []
        if not ctx.options.force:
            steps.append(
                self.step(
                    "observe",
                    f"Watch the compatibility views of {len(scopes)} schema(s) for "
                    f"{ctx.options.observe_seconds:g} s; refuse if any is used",
                    target=",".join(scopes),
                )
            )
        steps += [
            self.step(
                "drop_views",
                f"Drop the compatibility views of {scope} and their INSTEAD OF triggers",
                tenant_id=scope.removeprefix("tenant_") if scope.startswith("tenant_") else None,
                target=scope,
                destructive=True,
            )
            for scope in scopes
        ]
        return steps

    def confirmation_question(self, ctx: MigrationContext, steps: list[Step]) -> str:
        return (
            "Finalize DROPS the compatibility views (the legacy names): application code still using them "
            "will fail. Continue?"
        )

    def step_kinds(self) -> dict[str, StepKind]:
        return {"observe": StepKind(self._observe), "drop_views": StepKind(self._drop_views, self._check_dropped)}

    def _observe(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        scopes = set(step.target.split(","))
        before = compat.usage_counters()
        # Statistics reach the shared counters when a backend's transaction ends, at most once a
        # second while it is busy: the window must be longer than that to see a writer at all.
        time.sleep(ctx.options.observe_seconds)
        reporter.fence()
        after = compat.usage_counters()
        used: dict[str, int] = {}
        unobservable: list[str] = []
        for (schema, view), now in sorted(after.items()):
            if schema not in scopes:
                continue
            then = before.get((schema, view))
            if now is None:
                unobservable.append(f"{schema}.{view}")
            elif now - (then or 0) > 0:
                used[f"{schema}.{view}"] = now - (then or 0)
        if used:
            listed = ", ".join(f"{view} ({n})" for view, n in used.items())
            raise MigrationError(
                f"{len(used)} compatibility views were used in the last {ctx.options.observe_seconds:g} s "
                f"(statements): {listed}; switch that code to the new tables and run finalize again, "
                "or use --force to drop them anyway"
            )
        if unobservable:
            raise MigrationError(
                f"the use of {', '.join(unobservable)} cannot be observed (no probe table); "
                "use --force once you know nothing uses them"
            )
        return StepResult(
            message=f"no compatibility view used in {ctx.options.observe_seconds:g} s",
            details={"observed_seconds": ctx.options.observe_seconds, "views": len(after)},
        )

    def _drop_views(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        dropped: list[str] = []

        def drop() -> None:
            dropped[:] = compat.drop_views(step.target)

        # DROP VIEW waits for the statements using the view and holds up new ones meanwhile: bounded and retried
        attempts = capture.with_lock_retries(drop, ctx.options.lock_timeout_ms, f"drop the views of {step.target}")
        return StepResult(
            message=f"dropped {len(dropped)} compatibility views of {step.target}",
            details={"dropped": dropped, "attempts": attempts, "forced": ctx.options.force},
        )

    def _check_dropped(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        left = compat.compat_views(step.target)
        return [f"{step.target}: compatibility views left: {', '.join(left)}"] if left else []
