"""`migrate_phase status` reads the newest attempt of each step aggregated by the server (one row per
phase and tenant, not a record per step: 130,000 records at 10,000 tenants took seconds to build)."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from migrator.models import MigrationRecord, Status
from migrator.reports.status import GLOBAL, status_report

FAILING = "globex_0002"


def test_status_shows_the_newest_attempt_of_each_step(migrated: dict[str, Any]) -> None:
    tenants = migrated["tenants"]
    copy = MigrationRecord.objects.filter(phase="data", tenant_id=FAILING, step="copy_table").first()
    assert copy is not None
    # An older failed attempt of a step that later completed is history: the tenant's data is done.
    older = MigrationRecord.objects.filter(pk=copy.pk)
    older.update(attempt=copy.attempt + 1)  # now the newest attempt...
    failed = MigrationRecord.objects.create(
        migration_id=copy.migration_id,
        description=copy.description,
        status=Status.FAILED,
        phase=copy.phase,
        phase_number=copy.phase_number,
        tenant_id=copy.tenant_id,
        step=copy.step,
        target=copy.target,
        attempt=copy.attempt,  # ...and this failed one older than it
        host="h",
        error_message="boom",
    )

    report = status_report()
    assert all(report.cells[("data", t)] == "done" for t in tenants)
    assert report.failures == []

    MigrationRecord.objects.filter(pk=failed.pk).update(attempt=copy.attempt + 2)  # the failure is the newest
    with CaptureQueriesContext(connection) as captured:
        report = status_report()
    assert report.cells[("data", FAILING)] == "failed"
    assert [r.pk for r in report.failures] == [failed.pk]
    assert all(report.cells[("data", t)] == "done" for t in tenants if t != FAILING)
    assert report.cells[("data", GLOBAL)] == "done"
    assert report.cells[("cutover", FAILING)] == "pending"
    # ... one for the large tables in key ranges, one for tenant schemas created since phase 1, one for new
    # tenants holding legacy tables, two for the schemas in two-way sync and three for the schemas lacking a
    # migration of this release (two more per 500 schemas): a fixed number, whatever the tenants (up to 500)
    assert len(captured) <= 16
