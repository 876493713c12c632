"""``migrate_phase finalize``: end the online window: stop the two-way sync and archive the legacy tables.

Until finalize, the old application may keep writing the legacy tables (the sync carries its writes
to the new tables). Archiving them under it would break it, so finalize first watches them for
``--observe-seconds``: every statement of the application (not of the sync) that writes a legacy
table is noted by a statement trigger (see :mod:`migrator.ops.twoway`), and a table written in that
window is still in use: finalize refuses, naming the tables and the counts. ``--force`` goes on anyway.
"""

from __future__ import annotations

import time

from django.db import transaction

from migrator import db
from migrator.core.context import MigrationContext
from migrator.core.details import ObservedDetails, OnlineSwitchDetails, read_details
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.engine import tracking
from migrator.models import MigrationRecord, Status
from migrator.modes import online
from migrator.ops import twoway
from migrator.step_ref import StepRef
from salesflow.layout import tenant_id_from_schema

# The cutover steps a scope's two-way sync ends after: a tenant's, the legacy auth schema's.
TENANT_CUT_OVER = StepRef("cutover", "archive_legacy")
AUTH_CUT_OVER = StepRef("cutover", "archive_auth")


class FinalizePhase(Phase):
    name = "finalize"
    number = None
    alters_tables = True
    # The backup predates it: restored, the tenants are back to their legacy tables and may be rolled back.
    undone_by_restore = True
    summary = "stop the two-way sync of an online migration and archive the legacy tables once unused"
    # Every finalize looks at the legacy tables as they are now.
    always_rerun = True
    asks_confirmation = True

    @staticmethod
    def _scopes(ctx: MigrationContext) -> list[str]:
        scopes = twoway.synced_scopes()
        if ctx.tenant_filter:
            wanted = {t.schema for t in ctx.registered_tenants}
            scopes = [s for s in scopes if s in wanted]
        return scopes

    def plan(self, ctx: MigrationContext) -> list[Step]:
        scopes = self._scopes(ctx)
        if not scopes:
            return []
        steps = []
        if not ctx.options.force:
            steps.append(
                self.step(
                    "observe",
                    f"Watch the legacy tables of {len(scopes)} schema(s) for {ctx.options.observe_seconds:g} s; "
                    "refuse if the application writes any",
                )
            )
        # the auth schema last: tenants' reference edits may still reach it until they are finalized
        ordered = sorted(scopes, key=lambda s: (s == ctx.config.legacy_auth_schema, s))
        steps += [
            self.step(
                "finish_sync",
                f"Stop the two-way sync of {scope}, archive its legacy tables, carry their dependents to the new "
                "tables",
                tenant_id=tenant_id_from_schema(scope) if scope != ctx.config.legacy_auth_schema else None,
                target=scope,
                destructive=True,
            )
            for scope in ordered
        ]
        return steps

    def confirmation_question(self, ctx: MigrationContext, steps: list[Step]) -> str:
        return (
            "Finalize ARCHIVES the legacy tables (the legacy names): application code still using them "
            "will fail, and rollback after it needs --restore. Continue?"
        )

    def step_kinds(self) -> dict[str, StepKind]:
        return {"observe": StepKind(self._observe), "finish_sync": StepKind(self._finish_sync, self._check_finished)}

    def _observe(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        # Named here, not in the step's target: a record's target holds 200 characters, a few tenants' names.
        scopes = self._scopes(ctx)
        started = db.fetchvalue("SELECT clock_timestamp()")
        time.sleep(ctx.options.observe_seconds)
        reporter.fence()
        written = twoway.legacy_writes_since(scopes, started)
        with transaction.atomic():
            twoway.forget_legacy_writes_before(started)
        if written:
            listed = ", ".join(f"{scope}.{table} ({n})" for (scope, table), n in written.items())
            raise MigrationError(
                f"the application wrote {len(written)} legacy tables in the last {ctx.options.observe_seconds:g} s "
                f"(statements): {listed}; switch that code to the new tables and run finalize again, "
                "or use --force to archive them anyway"
            )
        return StepResult(
            message=f"no legacy table written in {ctx.options.observe_seconds:g} s",
            details=ObservedDetails(observed_seconds=ctx.options.observe_seconds, schemas=len(scopes)),
        )

    def _finish_sync(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        cut_over = self._require_cut_over(ctx, step)
        # the reference variants its cutover let the shared rows win over (--reference-conflicts first-wins)
        accepted = read_details(OnlineSwitchDetails, cut_over.details).get("discarded_reference_variants", [])
        result = online.finish_sync(ctx, step.target.name, step.tenant_id or step.target.name, accepted)
        with transaction.atomic():
            online.finish_shared_sync()
        return result

    @staticmethod
    def _require_cut_over(ctx: MigrationContext, step: Step) -> MigrationRecord:
        scope = step.target.name
        cut_over = TENANT_CUT_OVER if step.tenant_id else AUTH_CUT_OVER
        records = [
            r
            for r in tracking.latest_records(cut_over.phase).values()
            if r.step == cut_over.kind and r.tenant_id == step.tenant_id and r.status == Status.COMPLETED
        ]
        if not records:
            raise MigrationError(
                f"{scope} has not been cut over: run `migrate_phase cutover` first (finalize ends the online "
                "window after it)"
            )
        return records[0]

    def _check_finished(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        return [f"{step.target.name} is still in two-way sync"] if twoway.is_synced(step.target.name) else []
