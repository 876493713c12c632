"""A tenant schema created while the online window is open is reported, and keeps ``status --check`` red."""

from __future__ import annotations

import json

import pytest
from psycopg import sql

from tests.helpers import run
from tests.migrator.helpers import psycopg_connect
from tests.migrator.online.support import TENANT, cut_over_online

LATE = "tenant_late_0009"


def test_a_tenant_schema_created_in_the_window_is_reported_until_it_is_migrated(synced):
    cut_over_online()
    run("migrate_phase", "status", "--check")  # complete: every registered tenant cut over
    run("migrate_phase", "status", "--deploy-check")  # deploys go on, within the window's limits
    gate = json.loads(run("migrate_phase", "status", format="json"))
    assert gate["state"] == "online window open"
    assert gate["deploy_check"]["safe"] is True
    assert "refused whole until `migrate_phase finalize`" in gate["deploy_check"]["reason"]
    with psycopg_connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(LATE)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                sql.Identifier(LATE, "contacts"), sql.Identifier(TENANT, "contacts")
            )
        )
    with pytest.raises(SystemExit) as red:
        run("migrate_phase", "status", "--check")
    assert red.value.code == 1
    text = run("migrate_phase", "status")
    assert f"UNREGISTERED {LATE}" in text
    assert "migrate_phase prepare" in text
    report = json.loads(run("migrate_phase", "status", format="json"))
    assert report["unregistered_schemas"] == [LATE]
    assert report["complete"] is False
