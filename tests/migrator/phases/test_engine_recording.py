"""One recording path: a step's end and its tenant's state are written the same way whichever way the
runner ran the step (one by one, or a batch of tenants through its kind's ``apply_batch``), and the
rows a batch moved count in the phase's outcome as those of a step run alone do."""

from __future__ import annotations

from typing import Any

from migrator.config import get_config
from migrator.core.context import MigrationContext
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.engine.runner import PhaseRunner
from migrator.models import MigrationRecord, Status
from tenants.models import MigrationState, Tenant

ROWS_PER_TENANT = 7
REFUSED = "globex_0002"  # its batch result fails verification: it runs alone, and fails again


class BatchedCopyPhase(Phase):
    """A phase whose one tenant step moves rows and is done for many tenants at once."""

    name = "batched_copy"
    tenant_state_on_success = MigrationState.SCHEMAS_READY
    has_phase_wide_steps = False

    def __init__(self, tenant_ids: list[str], rerunnable: bool = False) -> None:
        self.tenant_ids = tenant_ids
        self.rerunnable = rerunnable

    def plan(self, ctx: MigrationContext) -> list[Step]:
        return [self.step("copy", f"copy of {t}", tenant_id=t, target="rows") for t in self.tenant_ids]

    def step_kinds(self) -> dict[str, StepKind]:
        return {
            "copy": StepKind(
                self._copy_one,
                self._check,
                moves_rows=True,
                apply_batch=self._copy_batch,
                batch_size=10,
                rerunnable=self.rerunnable,
            )
        }

    def _copy_one(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        return StepResult(rows_copied=ROWS_PER_TENANT, message="alone")

    def _copy_batch(self, ctx: MigrationContext, steps: list[Step]) -> dict[str, StepResult]:
        return {step.key: StepResult(rows_copied=ROWS_PER_TENANT, message="batch") for step in steps}

    def _check(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        return ["refused"] if step.tenant_id == REFUSED else []


def run_phase(phase: Phase) -> Any:
    ctx = MigrationContext(config=get_config())
    return PhaseRunner(ctx).run(phase, phase.plan(ctx))


def rows_of(tenant_id: str) -> list[MigrationRecord]:
    return list(MigrationRecord.objects.filter(phase=BatchedCopyPhase.name, tenant_id=tenant_id))


def test_a_batch_counts_its_rows_and_records_each_tenant_with_its_state(prepared: dict[str, Any]) -> None:
    tenants = [t for t in prepared["tenants"] if t != REFUSED]

    outcome = run_phase(BatchedCopyPhase(tenants))

    assert outcome.ok, outcome.failed
    assert outcome.rows_moved == ROWS_PER_TENANT * len(tenants)
    for tenant in tenants:
        [record] = rows_of(tenant)
        assert record.status == Status.COMPLETED
        assert record.rows_copied == ROWS_PER_TENANT
        assert record.details == {"message": "batch"}
        assert record.started_at is not None
        assert record.completed_at is not None
        assert record.duration == record.completed_at - record.started_at
        assert record.pid
        assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.SCHEMAS_READY


def test_a_step_the_batch_left_to_run_alone_is_recorded_as_one_run_alone(prepared: dict[str, Any]) -> None:
    for rerunnable in (False, True):
        MigrationRecord.objects.filter(phase=BatchedCopyPhase.name).delete()
        Tenant.objects.update(migration_state=MigrationState.REGISTERED)

        outcome = run_phase(BatchedCopyPhase(prepared["tenants"], rerunnable=rerunnable))

        assert [step.tenant_id for step, _error in outcome.failed] == [REFUSED]
        assert outcome.rows_moved == ROWS_PER_TENANT * (len(prepared["tenants"]) - 1)
        [failed] = rows_of(REFUSED)
        assert failed.status == Status.FAILED
        assert failed.error_message == "refused"
        assert failed.rows_copied == ROWS_PER_TENANT  # what the step did, kept with its failure
        assert failed.details == {"message": "alone"}
        assert failed.started_at is not None
        assert failed.duration is not None
        assert Tenant.objects.get(tenant_id=REFUSED).migration_state == MigrationState.FAILED
        for tenant in prepared["tenants"]:
            if tenant != REFUSED:
                assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.SCHEMAS_READY
