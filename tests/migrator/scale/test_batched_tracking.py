"""Tenant steps that can run again (grants, checks) write their tracking rows and the tenant's state
together at the end of the tenant: a run killed in the middle of a tenant leaves that tenant's steps
as they were (no COMPLETED without the rest), and the rerun finishes them."""

from __future__ import annotations

from typing import Any

from migrator.config import get_config
from migrator.models import MigrationRecord, Status
from migrator.ops import grants
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.scale.support import kill_at_the_end_of, statuses

DONE_FIRST, BLOCKED = "acme_0001", "globex_0002"


def test_security_killed_in_the_middle_of_a_tenant_resumes_it(migrated: dict[str, Any]) -> None:
    kill_at_the_end_of(BLOCKED, "security")

    assert statuses("security", DONE_FIRST) == {Status.COMPLETED}
    assert Tenant.objects.get(tenant_id=DONE_FIRST).migration_state == MigrationState.SECURED
    assert statuses("security", BLOCKED) == {Status.PENDING}  # nothing of the killed tenant was recorded
    assert Tenant.objects.get(tenant_id=BLOCKED).migration_state == MigrationState.DATA_MIGRATED

    run("migrate_phase", "security", interactive=False)

    for tenant in migrated["tenants"]:
        assert statuses("security", tenant) == {Status.COMPLETED}
        assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.SECURED
    assert grants.privilege_problems(get_config(), [f"tenant_{t}" for t in migrated["tenants"]]) == []
    done = MigrationRecord.objects.get(phase="security", tenant_id=BLOCKED, status=Status.COMPLETED)
    assert done.started_at
    assert done.completed_at
    assert done.duration is not None
    assert done.pid
    assert "usage_granted" in done.details


def test_verify_killed_in_the_middle_of_a_tenant_resumes_it(migrated: dict[str, Any]) -> None:
    run("migrate_phase", "security", interactive=False)
    kill_at_the_end_of(BLOCKED, "verify")  # its five checks have run, none is recorded

    assert statuses("verify", DONE_FIRST) == {Status.COMPLETED}
    assert statuses("verify", BLOCKED) == {Status.PENDING}
    assert Tenant.objects.get(tenant_id=BLOCKED).migration_state == MigrationState.SECURED

    run("migrate_phase", "verify", interactive=False, load_seconds=0.2, load_queries=20, load_max_regression=10000)

    for tenant in migrated["tenants"]:
        assert statuses("verify", tenant) == {Status.COMPLETED}
        assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.VERIFIED
    checked = MigrationRecord.objects.get(phase="verify", tenant_id=BLOCKED, step="counts_match", attempt=1)
    assert checked.details["problems"] == []
    assert checked.details["message"]
