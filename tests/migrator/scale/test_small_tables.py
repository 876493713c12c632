"""Many small tenants: a small table is copied into its indexes and constraints as they are, and ends
exactly as a table copied the bulk way (constraints dropped, then rebuilt); several tenants' grants
run in one transaction, and a run killed in the middle of such a batch resumes exactly."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from migrator import db
from migrator.config import get_config
from migrator.models import MigrationRecord, Status
from migrator.ops import grants
from migrator.tables import TENANT_DATA_TABLES
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.helpers import content, latest, plain_columns
from tests.migrator.scale.support import kill_at_the_end_of, statuses

SMALL, BULK = "acme_0001", "globex_0002"  # 120 contacts and 240 activities each


def table_shape(schema: str, table: str) -> dict[str, object]:
    """Indexes, constraints (validated or not) and the id sequence's position, the schema name left out."""
    relation = f"{schema}.{table}"
    indexes = sorted(
        row[0].replace(f"{schema}.", "")
        for row in db.fetchall(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass", [relation]
        )
    )
    constraints = sorted(
        (name, definition.replace(f"{schema}.", ""), validated)
        for name, definition, validated in db.fetchall(
            "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint WHERE conrelid = %s::regclass",
            [relation],
        )
    )
    sequence = db.fetchone(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = pg_get_serial_sequence(%s, 'id')::regclass",
        [relation],
    )
    assert sequence is not None
    position = db.fetchone(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(*sequence)))
    return {"indexes": indexes, "constraints": constraints, "sequence": position}


def test_a_small_table_copied_directly_ends_as_one_copied_the_bulk_way(schemas_ready: dict[str, Any]) -> None:
    run("migrate_phase", "data", interactive=False, tenant=[SMALL])  # default batch: every table in one batch
    run("migrate_phase", "data", interactive=False, tenant=[BULK], batch_size=50)  # batches: the bulk way

    bulk_tables = 0
    for spec in TENANT_DATA_TABLES:
        small = latest(f"data/{SMALL}/copy_table/{spec.target_table}")
        bulk = latest(f"data/{BULK}/copy_table/{spec.target_table}")
        assert small.status == bulk.status == Status.COMPLETED
        assert small.details["deferred"] == small.details["rebuilt"] == 0  # nothing dropped
        assert small.details["batches"] == 1
        if bulk.rows_expected > 50:  # more than one batch: the bulk way (a table that small is copied directly)
            bulk_tables += 1
            assert bulk.details["deferred"] == bulk.details["rebuilt"] > 0
        assert small.checkpoint == small.rows_copied == small.rows_expected  # the one batch's checkpoint
        assert table_shape(f"tenant_{SMALL}", spec.target_table) == table_shape(f"tenant_{BULK}", spec.target_table)
        for tenant in (SMALL, BULK):
            schema = f"tenant_{tenant}"
            columns = plain_columns(spec.legacy_table)
            assert content(schema, spec.target_table, columns) == content(schema, spec.legacy_table, columns)
            check = latest(f"data/{tenant}/validate/{spec.target_table}")
            assert check.status == Status.COMPLETED
            assert check.source_fingerprint == check.target_fingerprint
    assert not MigrationRecord.objects.filter(phase="data").exclude(status=Status.COMPLETED).exists()
    assert bulk_tables >= 2  # contacts and activities of the seeded stage at least


def test_a_small_copy_resumes_what_a_bulk_copy_left_deferred(schemas_ready: dict[str, Any]) -> None:
    """A bulk attempt that died after dropping the constraints: the direct copy rebuilds them."""
    from migrator.ops import constraints

    schema, table = f"tenant_{SMALL}", TENANT_DATA_TABLES[0].target_table
    before = table_shape(schema, table)
    assert constraints.defer_constraints(schema, table) > 0

    run("migrate_phase", "data", interactive=False, tenant=[SMALL])

    copy = latest(f"data/{SMALL}/copy_table/{table}")
    assert copy.status == Status.COMPLETED
    assert copy.details["deferred"] == 0
    assert copy.details["rebuilt"] > 0
    assert constraints.pending_deferred(schema, table) == []
    after = table_shape(schema, table)
    assert (after["indexes"], after["constraints"]) == (before["indexes"], before["constraints"])


def test_security_killed_in_the_middle_of_a_batch_of_tenants_resumes_it(migrated: dict[str, Any]) -> None:
    first = migrated["tenants"][0]
    kill_at_the_end_of(first, "security")  # the batch's grants have run; its first tenant's record waits

    schemas = [f"tenant_{t}" for t in migrated["tenants"]]
    # One batch: every tenant's grants committed in its one transaction, and nothing of it was recorded.
    assert grants.privilege_problems(get_config(), schemas, public=False) == []
    for tenant in migrated["tenants"]:
        assert statuses("security", tenant) == {Status.PENDING}
        assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.DATA_MIGRATED

    run("migrate_phase", "security", interactive=False)

    for tenant in migrated["tenants"]:
        assert statuses("security", tenant) == {Status.COMPLETED}
        assert Tenant.objects.get(tenant_id=tenant).migration_state == MigrationState.SECURED
        assert MigrationRecord.objects.filter(phase="security", tenant_id=tenant).count() == 1  # one attempt
    assert grants.privilege_problems(get_config(), schemas) == []
