"""The online cutover's comparison: both sides read in one snapshot; a tenant whose two-way sync was bypassed
(its trigger dropped or disabled, a write made with triggers off) is refused and nothing changes."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError
from psycopg import sql

from migrator.models import Status
from tests.helpers import legacy_fingerprints, run
from tests.migrator.helpers import psycopg_connect, records, value
from tests.migrator.online.support import migrate_online_until_cutover

TENANT = "tenant_acme_0001"
BYPASS = {
    "dropped": "DROP TRIGGER salesflow_sync ON {}",
    "disabled": "ALTER TABLE {} DISABLE TRIGGER salesflow_sync",
}


def cut_over(tenant_id: str) -> bool:
    return any(
        r.status == Status.COMPLETED for r in records(phase="cutover", step="archive_legacy", tenant_id=tenant_id)
    )


@pytest.mark.parametrize("how", sorted(BYPASS))
def test_cutover_refuses_a_tenant_whose_two_way_sync_trigger_is_gone(schemas_ready, how):
    migrate_online_until_cutover()
    contacts = sql.Identifier(TENANT, "contacts")
    with psycopg_connect() as conn:
        conn.execute(sql.SQL(BYPASS[how]).format(contacts))
        # a write the sync no longer carries: on the legacy side only
        conn.execute(sql.SQL("UPDATE {} SET phone = 'unsynced' WHERE id = 1").format(contacts))
    before = legacy_fingerprints(["acme_0001"])
    with pytest.raises(CommandError, match="the two-way sync trigger of contacts is gone or disabled") as refused:
        run("migrate_phase", "cutover", "--tenant", "acme_0001", interactive=False)
    assert "rollback --tenant" in str(refused.value)
    # nothing changed: the legacy tables as they were, the tenant not live
    assert value("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [f"{TENANT}.contacts"]) == "r"
    assert legacy_fingerprints(["acme_0001"]) == before
    assert not cut_over("acme_0001")
    assert value("SELECT migration_state FROM public.tenants WHERE tenant_id = 'acme_0001'") != "LIVE"


def test_cutover_refuses_a_tenant_whose_sides_differ_after_a_write_with_triggers_off(schemas_ready):
    """``session_replication_role = replica`` skips ordinary triggers: the trigger is there, the write is
    on one side only. The comparison in one snapshot finds it and names the key."""
    migrate_online_until_cutover()
    with psycopg_connect() as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(sql.SQL("UPDATE {} SET phone = 'replica' WHERE id = 7").format(sql.Identifier(TENANT, "contacts")))
    before = legacy_fingerprints(["acme_0001"])
    with pytest.raises(CommandError, match="the new tables differ from the legacy ones") as refused:
        run("migrate_phase", "cutover", "--tenant", "acme_0001", interactive=False)
    assert "differing keys 7" in str(refused.value)
    assert "nothing was switched" in str(refused.value)
    assert legacy_fingerprints(["acme_0001"]) == before
    assert not cut_over("acme_0001")
