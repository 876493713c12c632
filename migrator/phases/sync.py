"""``migrate_phase sync``: apply the changes captured since ``data --online`` (``--follow``: until interrupted)."""

from __future__ import annotations

from migrator import catalog
from migrator.core.context import MigrationContext
from migrator.core.details import SyncApplyDetails
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.modes import online
from migrator.ops import capture
from salesflow.layout import tenant_id_from_schema


class SyncPhase(Phase):
    name = "sync"
    number = None
    changes_schemas = False  # rows only: deploys may run meanwhile (tenants/schema_lock.py)
    # what it applied went into the new tables, which a rollback drops and a restore predates
    undone_by_rollback = True
    undone_by_restore = True
    summary = "apply the writes captured since `data --online` (--follow: until SIGINT/SIGTERM)"
    # Every sync is a new event: nothing about an earlier one makes this one unnecessary.
    always_rerun = True

    def plan(self, ctx: MigrationContext) -> list[Step]:
        if ctx.options.follow:
            return [self.step("follow", "Apply the captured changes of every captured schema until interrupted")]
        steps = []
        auth = ctx.config.legacy_auth_schema
        if not ctx.tenant_filter and online.is_online(auth):
            steps.append(self.step("apply", f"Apply the changes captured on {auth}", target=auth))
        for tenant in ctx.registered_tenants:
            if online.is_online(tenant.schema):
                steps.append(self.tenant_step("apply", f"Apply the changes captured on {tenant.schema}", tenant))
        return steps

    def step_kinds(self) -> dict[str, StepKind]:
        return {"apply": StepKind(self._apply), "follow": StepKind(self._follow)}

    def _apply(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        # deploys may change the tables meanwhile: no catalog read is kept for the rounds (see sync_scope)
        stats = online.sync_scope(ctx, step.target.name, reporter, catalog.NOT_READ)
        return StepResult(
            message=f"{stats.changes} captured changes applied ({sum(stats.keys.values())} rows re-copied)",
            rows_copied=stats.changes,
            details=SyncApplyDetails(
                changes=stats.changes, keys=stats.keys, whole_scope_rounds=stats.whole_scope_rounds
            ),
        )

    def _follow(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        stop = ctx.options.stop
        applied = rounds = 0
        wanted = set(ctx.tenant_filter)
        while not stop.is_set():
            consumed = 0
            for scope in capture.captured_scopes():
                tenant_id = tenant_id_from_schema(scope) if scope != ctx.config.legacy_auth_schema else None
                if wanted and tenant_id not in wanted:
                    continue
                consumed += online.sync_scope(ctx, scope, reporter, catalog.NOT_READ).changes
            applied += consumed
            rounds += 1
            reporter.progress(applied, None)
            if not consumed:
                stop.wait(ctx.options.follow_interval)
        return StepResult(
            message=f"stopped on request after {rounds} rounds; {applied} captured changes applied",
            rows_copied=applied,
            details=SyncApplyDetails(rounds=rounds, changes=applied),
        )
