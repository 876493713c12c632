"""A phase rerun after a rollback plans what it plans now: the steps of the earlier run it no longer plans
(an online run's sync steps rerun offline, a tenant excluded then included) are history, not unfinished
work that holds back the next phase, status --check and the dashboard."""

from __future__ import annotations

from typing import Any

from migrator.models import MigrationRecord, Status
from migrator.reports import dashboard
from migrator.reports.status import GLOBAL, status_report
from tests.helpers import run


def test_data_rerun_offline_after_an_online_run_was_rolled_back_lets_phase_4_run(schemas_ready: dict[str, Any]) -> None:
    tenants = schemas_ready["tenants"]
    run("migrate_phase", "data", "--online", interactive=False, batch_size=50)
    run("migrate_phase", "rollback", interactive=False)
    run("migrate_phase", "schemas", interactive=False)

    run("migrate_phase", "data", interactive=False, batch_size=50)
    assert MigrationRecord.objects.filter(step="start_two_way_sync", status=Status.ROLLED_BACK).exists()
    run("migrate_phase", "security", interactive=False)  # refused every tenant: "phase data is not complete"

    report = status_report()
    for tenant in tenants:
        assert report.cells[("data", tenant)] == "done", report.cells
        assert report.cells[("security", tenant)] == "done", report.cells
    data = next(phase for phase in dashboard.build_dashboard().phases if phase.name == "data")
    assert (data.done, data.rolled_back, data.phase_wide) == (len(tenants), 0, "done")


def test_a_narrower_rerun_after_a_rollback_leaves_the_steps_it_did_not_plan_to_do(
    schemas_ready: dict[str, Any],
) -> None:
    tenants = schemas_ready["tenants"]
    run("migrate_phase", "data", interactive=False, batch_size=50)
    run("migrate_phase", "rollback", interactive=False)
    run("migrate_phase", "schemas", interactive=False)

    run("migrate_phase", "data", "--tenant", tenants[0], interactive=False, batch_size=50)

    # the auth tables' copies (phase-wide) were not planned by a run for one tenant: still to do
    assert status_report().cells[("data", GLOBAL)] != "done"
    run("migrate_phase", "data", interactive=False, batch_size=50)  # their next attempts, numbered after the last
    report = status_report()
    assert report.cells[("data", GLOBAL)] == "done"
    assert all(report.cells[("data", tenant)] == "done" for tenant in tenants)


def test_a_migration_run_again_after_a_finalized_one_was_restored_can_be_rolled_back(synced: dict[str, Any]) -> None:
    tenant = synced["tenants"][0]
    for phase in ("security", "verify", "cutover"):
        run("migrate_phase", phase, interactive=False)
    run("migrate_phase", "finalize", observe_seconds=0, interactive=False)
    run("migrate_phase", "rollback", restore=True, interactive=False)
    # the restored database holds the legacy tables again: the finalize that archived them is undone too
    assert not MigrationRecord.objects.latest_attempts().filter(phase="finalize", status=Status.COMPLETED).exists()
    for phase in ("prepare", "schemas", "data"):
        run("migrate_phase", phase, interactive=False)

    run("migrate_phase", "rollback", "--tenant", tenant, interactive=False)  # refused: "cutover has run"
    assert status_report().cells[("data", tenant)] != "done"
