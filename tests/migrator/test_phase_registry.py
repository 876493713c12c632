"""The phase registry: each phase is the one place of its facts, and the facts agree with each other."""

from __future__ import annotations

import pytest

from migrator.core.phase import Phase
from migrator.phases import ORDERED, PHASES, get_phase, phase_choices, phases_help
from migrator.phases.rollback import undone_phases
from tenants.models import MigrationState


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
        step = instance.step(next(iter(instance.step_kinds())), "any")
        assert (step.phase, step.phase_number) == (phase.name, phase.number)


def test_rollback_undoes_what_the_phases_declare():
    rolled_back = undone_phases(restore=False)
    restored = undone_phases(restore=True)
    assert rolled_back == [p.name for p in ORDERED if p.undone_by_rollback]
    assert set(rolled_back) <= set(restored)
    # a restore replaces the whole database: every ordered phase is undone
    assert restored == [p.name for p in ORDERED]
    # a rollback never undoes phase 1 (its backup is what --restore needs) or cutover (refused after it)
    assert ORDERED[0].name not in rolled_back
    assert ORDERED[-1].name not in rolled_back


def test_help_and_choices_list_every_phase():
    text = phases_help()
    for phase in PHASES:
        assert phase.name in text
        assert phase.summary in text
    assert phase_choices()[: len(ORDERED)] == [f"{p.number} {p.name}" for p in ORDERED]
