"""Verify's tenant checks read what they ask the server from the facts of their batch, handed to them
explicitly; a check run outside a batch reads the same facts for a batch of its tenant alone, and finds
the same."""

from __future__ import annotations

from typing import Any

from migrator.config import get_config
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.steps import StepReporter
from migrator.phases.verify import TENANT_CHECKS, VerifyPhase
from migrator.tables import TENANT_DATA_TABLES
from tests.helpers import run
from tests.migrator.helpers import count


def test_a_tenant_check_finds_the_same_in_a_batch_and_alone(migrated: dict[str, Any]) -> None:
    tenants = migrated["tenants"]
    run("migrate_phase", "security", interactive=False)
    phase = VerifyPhase()
    ctx = MigrationContext(config=get_config())
    checked = tenants[0]
    steps = [step for step in phase.plan(ctx) if step.tenant_id == checked]
    assert sorted(step.kind for step in steps) == sorted(TENANT_CHECKS)

    with phase.tenant_batch(ctx, tenants) as batch:
        in_batch = {step.kind: phase.apply(ctx, step, StepReporter(batch=batch)) for step in steps}
    alone = {step.kind: phase.apply(ctx, step, StepReporter()) for step in steps}

    for step in steps:
        assert phase.verify(ctx, step, in_batch[step.kind]) == []
        assert alone[step.kind].details == in_batch[step.kind].details
        assert alone[step.kind].message == in_batch[step.kind].message
    schema = TenantRef(checked).schema
    expected = {t.legacy_table: count(schema, t.legacy_table) for t in TENANT_DATA_TABLES}
    assert in_batch["counts_match"].details["counts"] == expected
