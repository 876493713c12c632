"""The phase registry: each phase is the one place of its facts, and the facts agree with each other."""

from __future__ import annotations

import sys

import pytest

from migrator import phases as phase_registry
from migrator.core.context import MigrationContext
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.management.commands.migrate_phase import Command
from migrator.models import MigrationRecord, Status
from migrator.phases import ORDERED, PHASES, get_phase, phase_choices, phases_help
from migrator.phases.rehearse import rehearsed_phases
from migrator.phases.rollback import undone_phases
from migrator.reports import status
from migrator.reports.dashboard import build_dashboard
from migrator.reports.status import GLOBAL, NOT_APPLICABLE, StatusReport
from migrator.step_ref import StepRef
from tenants.models import MigrationState
from tests.helpers import run


def test_numbers_are_unique_and_run_from_one_in_order():
    numbers = [p.number for p in ORDERED]
    assert numbers == list(range(1, len(ORDERED) + 1))
    assert len({p.name for p in PHASES}) == len(PHASES)
    assert [p for p in PHASES if p.number is None] == [p for p in PHASES if p not in ORDERED]


@pytest.mark.parametrize("phase", ORDERED, ids=lambda p: p.name)
def test_requires_points_at_an_earlier_phase(phase: type[Phase]):
    if phase.number == 1:
        assert phase.requires is None
        return
    assert phase.requires is not None, f"{phase.name} requires nothing"
    required = get_phase(phase.requires)
    assert required.number is not None
    assert required.number < (phase.number or 0)


@pytest.mark.parametrize("phase", PHASES, ids=lambda p: p.name)
def test_the_state_a_phase_sets_exists_and_is_its_own(phase: type[Phase]):
    if phase.tenant_state_on_success is None:
        return
    assert phase.tenant_state_on_success in MigrationState.values
    others = [p.name for p in PHASES if p is not phase and p.tenant_state_on_success == phase.tenant_state_on_success]
    assert not others, f"{phase.name} and {others} set the same state"


@pytest.mark.parametrize("phase", PHASES, ids=lambda p: p.name)
def test_every_step_kind_can_be_applied_and_verified(phase: type[Phase]):
    kinds = phase().step_kinds()
    assert kinds
    for name, kind in kinds.items():
        assert callable(kind.apply), name
        assert callable(kind.verify), name
    with pytest.raises(ValueError, match="no step kind"):
        phase().step("no_such_kind", "a typo in a plan is caught when the plan is built")


def test_steps_carry_their_phase_number():
    for phase in PHASES:
        instance = phase()
        tenant_id = None if phase.has_phase_wide_steps else "acme_0001"
        step = instance.step(next(iter(instance.step_kinds())), "any", tenant_id=tenant_id)
        assert (step.phase, step.phase_number) == (phase.name, phase.number)


def test_rollback_undoes_what_the_phases_declare():
    rolled_back = undone_phases(restore=False)
    restored = undone_phases(restore=True)
    assert rolled_back[: len([p for p in ORDERED if p.undone_by_rollback])] == [
        p.name for p in ORDERED if p.undone_by_rollback
    ]
    assert set(rolled_back) == {p.name for p in PHASES if p.undone_by_rollback}
    assert set(rolled_back) <= set(restored)
    # a restore replaces the whole database: every ordered phase is undone, and finalize (after cutover) too
    assert restored[: len(ORDERED)] == [p.name for p in ORDERED]
    assert "finalize" in restored
    assert "finalize" not in rolled_back
    # a rollback never undoes phase 1 (its backup is what --restore needs) or cutover (refused after it)
    assert ORDERED[0].name not in rolled_back
    assert ORDERED[-1].name not in rolled_back


def test_help_and_choices_list_every_phase():
    text = phases_help()
    for phase in PHASES:
        assert phase.name in text
        assert phase.summary in text
    assert phase_choices()[: len(ORDERED)] == [f"{p.number} {p.name}" for p in ORDERED]


class TenantStepsOnlyPhase(Phase):
    """A phase the way a maintainer may add one: every step is a tenant's."""

    name = "tenant_steps_only"
    number = len(ORDERED) + 1
    requires = ORDERED[-1].name
    undone_by_restore = True
    has_phase_wide_steps = False

    def plan(self, ctx: MigrationContext) -> list[Step]:
        return [self.step("touch", f"touch {t.schema}", tenant_id=t.tenant_id) for t in ctx.registered_tenants]

    def step_kinds(self) -> dict[str, StepKind]:
        return {"touch": StepKind(self._touch)}

    def _touch(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        return StepResult(message="touched")


def test_a_phase_without_phase_wide_steps_cannot_plan_one():
    phase = TenantStepsOnlyPhase()
    assert phase.step("touch", "a tenant's", tenant_id="acme_0001").tenant_id == "acme_0001"
    with pytest.raises(ValueError, match="declares no phase-wide steps"):
        phase.step("touch", "the whole database's")


def test_the_deploy_gate_opens_whether_or_not_a_phase_has_phase_wide_steps():
    done = {("data", GLOBAL): "done", ("data", "acme_0001"): "done", ("touch", "acme_0001"): "done"}
    assert StatusReport(["data", "touch"], [GLOBAL, "acme_0001"], {**done, ("touch", GLOBAL): NOT_APPLICABLE}).complete
    assert not StatusReport(["data", "touch"], [GLOBAL, "acme_0001"], {**done, ("touch", GLOBAL): "pending"}).complete


def test_status_shows_no_phase_wide_cell_for_a_phase_of_tenant_steps_only(migrated, monkeypatch):
    monkeypatch.setattr(phase_registry, "ORDERED", (*ORDERED, TenantStepsOnlyPhase))
    tenants = migrated["tenants"]
    for tenant in tenants:
        MigrationRecord.objects.create(
            migration_id=f"{TenantStepsOnlyPhase.name}/{tenant}/touch",
            description="touch",
            status=Status.COMPLETED,
            phase=TenantStepsOnlyPhase.name,
            phase_number=TenantStepsOnlyPhase.number,
            tenant_id=tenant,
            step="touch",
            host="h",
        )

    report = status.status_report()
    assert report.cells[(TenantStepsOnlyPhase.name, GLOBAL)] == NOT_APPLICABLE
    assert all(report.cells[(TenantStepsOnlyPhase.name, t)] == "done" for t in tenants)
    assert report.cells[("data", GLOBAL)] == "done"  # the others keep theirs
    assert report.cells_to_do == len(report.cells) - sum(not p.has_phase_wide_steps for p in phase_registry.ORDERED)
    out = run("migrate_phase", "status")
    assert f"{report.cells_done}/{report.cells_to_do} cells done" in out


@pytest.mark.parametrize("phase", PHASES, ids=lambda p: p.name)
def test_the_steps_a_phase_names_are_planned_by_their_phase(phase: type[Phase]):
    """A phase names another phase's step (or one of its own that others read) by a StepRef: each names a
    registered phase and a kind of step that phase has, so renaming a kind cannot leave a reader behind."""
    module = sys.modules[phase.__module__]
    refs = [v for v in [*vars(module).values(), *vars(phase).values()] if isinstance(v, StepRef)]
    for ref in refs:
        assert ref.kind in get_phase(ref.phase)().step_kinds(), ref


class AddedPhase(Phase):
    """A phase added the way docs/architecture.md says: this class, and its line in the registry."""

    name = "added_after_the_others"
    number = len(ORDERED) + 1
    summary = "a phase added after the others, touching every tenant"
    requires = ORDERED[-1].name
    undone_by_restore = True

    def plan(self, ctx: MigrationContext) -> list[Step]:
        steps = [self.step("touch", f"Touch {t.schema}", tenant_id=t.tenant_id) for t in ctx.registered_tenants]
        return [*steps, self.step("count", "Count the tenants touched")]

    def step_kinds(self) -> dict[str, StepKind]:
        return {"touch": StepKind(self._done), "count": StepKind(self._done)}

    def _done(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        return StepResult(message="done")


@pytest.fixture
def added_phase(monkeypatch: pytest.MonkeyPatch) -> type[Phase]:
    """The phase in the registry (its one line there) for the length of a test."""
    monkeypatch.setattr(phase_registry, "PHASES", (*PHASES, AddedPhase))
    monkeypatch.setattr(phase_registry, "ORDERED", (*ORDERED, AddedPhase))
    return AddedPhase


def test_an_added_phase_is_in_the_help_with_no_edit_outside_its_module(added_phase: type[Phase]):
    text = " ".join(Command().create_parser("manage.py", "migrate_phase").format_help().split())
    assert f"{added_phase.number} {added_phase.name} ({added_phase.summary})" in text
    assert f"`all` runs 1 to {added_phase.number}" in text
    assert f"{added_phase.number} {added_phase.name}," in text  # a choice of the phase argument


def test_an_added_phase_is_planned_shown_and_rehearsed_with_no_edit_outside_its_module(
    migrated, added_phase: type[Phase]
):
    tenants = migrated["tenants"]
    # --plan: alone, and as the last phase of `all`
    plan = run("migrate_phase", added_phase.name, plan=True)
    assert all(f"[{t}] touch" in plan for t in tenants)
    assert "[all] count" in plan
    assert f"[{tenants[0]}] touch" in run("migrate_phase", "all", plan=True)

    # status: its column, every cell to do (phase-wide too)
    report = status.status_report()
    assert added_phase.name in report.phases
    assert {report.cells[(added_phase.name, t)] for t in [GLOBAL, *tenants]} == {"pending"}
    assert added_phase.name in run("migrate_phase", "status")

    # the dashboard: its progress line, in plan order
    dashboard = build_dashboard()
    assert [p.name for p in dashboard.phases] == [p.name for p in (*ORDERED, added_phase)]
    assert dashboard.phases[-1].tenants == len(tenants)

    # the rehearsal: the scratch run's phases, as its plan names them and its report lists them
    assert [p.name for p in rehearsed_phases()] == [p.name for p in (*ORDERED, added_phase)]
    rehearsal_plan = run("migrate_phase", "rehearse", plan=True)
    assert ", ".join(p.name for p in (*ORDERED, added_phase)) in " ".join(rehearsal_plan.split())
