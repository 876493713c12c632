"""Rollback before ``finalize``: lossless whichever side was written, atomic (a refused rollback changes
nothing), and never holding writers longer than ``--lock-timeout`` per attempt."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.core.management.base import CommandError
from psycopg import sql

from migrator.config import get_config
from migrator.core.context import MigrationContext, RunOptions
from migrator.modes import online
from migrator.ops import twoway
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.helpers import content, plain_columns, psycopg_connect, table_names, value
from tests.migrator.online.support import ACTIVITIES, AUTH, CONTACTS, TENANT, cut_over_online, on_tenant


def test_rollback_after_an_online_cutover_keeps_every_write_made_on_either_side(synced):
    cut_over_online()
    with psycopg_connect() as conn:
        conn.execute(on_tenant("UPDATE {} SET phone = 'legacy side' WHERE id = 1", "contacts"))
        conn.execute(on_tenant("UPDATE {} SET phone = 'new side' WHERE id = 2", CONTACTS))
        new_id = conn.execute(
            on_tenant("INSERT INTO {} (first_name, created_at) VALUES ('Since cutover', now()) RETURNING id", CONTACTS)
        ).fetchone()[0]
        conn.execute(on_tenant("DELETE FROM {} WHERE id = 3", ACTIVITIES))
        conn.execute("INSERT INTO auth.users (email, password_hash, created_at) VALUES ('new@example.com', 'x', now())")
    cols = plain_columns("contacts")
    new_side = content(TENANT, CONTACTS, cols)
    run("migrate_phase", "rollback", interactive=False)
    assert content(TENANT, "contacts", cols) == new_side  # every row as the new tables had it
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 2", "contacts")) == "new side"
    assert value(on_tenant("SELECT count(*) FROM {} WHERE id = %s", "contacts"), [new_id]) == 1
    assert value(on_tenant("SELECT count(*) FROM {} WHERE id = 3", "activities")) == 0
    assert value("SELECT count(*) FROM salesflow_auth.users WHERE email = 'new@example.com'") == 1
    assert CONTACTS not in table_names(TENANT)
    assert twoway.synced_scopes() == []
    assert value("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'salesflow_sync%%'") == 0
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.ROLLED_BACK
    with psycopg_connect() as conn:  # the legacy sequence steps by 1 again, past the new side's ids
        ids = [
            conn.execute(
                on_tenant("INSERT INTO {} (first_name, created_at) VALUES ('Back', now()) RETURNING id", "contacts")
            ).fetchone()[0]
            for _ in range(2)
        ]
    assert ids[0] > new_id
    assert ids[1] == ids[0] + 1


def test_the_new_tables_refuse_writes_once_a_rollback_stopped_their_sync_until_they_are_dropped(synced):
    """Between a scope's sync stop and the drop of its new tables (the next steps: other tenants first, the
    auth tables last), a write to a new table would be lost and its id issued again by the legacy sequence."""
    cut_over_online()
    ctx = MigrationContext(config=get_config(), options=RunOptions(lock_timeout_ms=200))
    online.stop_sync(ctx, TENANT)
    online.stop_sync(ctx, AUTH)
    legacy_rows = value(on_tenant("SELECT count(*) FROM {}", "contacts"))

    with psycopg_connect() as conn:
        for statement in (
            on_tenant("INSERT INTO {} (first_name, created_at) VALUES ('after the stop', now())", CONTACTS),
            on_tenant("UPDATE {} SET first_name = 'after the stop' WHERE id = 1", CONTACTS),
            on_tenant("DELETE FROM {} WHERE id = 3", ACTIVITIES),
            sql.SQL("INSERT INTO auth.users (email, password_hash, created_at) VALUES ('gap@example.com', 'h', now())"),
        ):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="is being rolled back") as refused:
                conn.execute(statement)
            conn.rollback()
        assert "write there" in str(refused.value)
        assert "salesflow_auth.users" in str(refused.value)  # where the rows are now
        conn.execute(on_tenant("UPDATE {} SET first_name = 'legacy side' WHERE id = 1", "contacts"))  # still written
        conn.commit()

    run("migrate_phase", "rollback", interactive=False)
    assert value(on_tenant("SELECT count(*) FROM {}", "contacts")) == legacy_rows
    assert value(on_tenant("SELECT first_name FROM {} WHERE id = 1", "contacts")) == "legacy side"
    assert value("SELECT count(*) FROM salesflow_auth.users WHERE email = 'gap@example.com'") == 0
    assert CONTACTS not in table_names(TENANT)
    assert value("SELECT count(*) FROM pg_trigger WHERE tgname = 'salesflow_rolled_back'") == 0


def test_a_refused_rollback_changes_nothing(synced):
    with psycopg_connect() as conn:  # a deploy added a column the legacy table has no place for, and it is used
        conn.execute(on_tenant("ALTER TABLE {} ADD COLUMN nickname text", CONTACTS))
        conn.execute(on_tenant("UPDATE {} SET nickname = 'Bob' WHERE id = 4", CONTACTS))
    states = dict(Tenant.objects.values_list("tenant_id", "migration_state"))
    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "rollback", interactive=False)
    message = str(refused.value)
    assert "contact_data_contacts.nickname: 1 rows" in message
    assert "nothing was rolled back" in message
    assert set(twoway.synced_scopes()) == {"salesflow_auth", TENANT, "tenant_globex_0002", "tenant_empty_0001"}
    assert CONTACTS in table_names(TENANT)
    assert value("SELECT count(*) FROM auth.users") > 0
    assert dict(Tenant.objects.values_list("tenant_id", "migration_state")) == states


@pytest.mark.long
def test_rollback_holds_writers_at_most_its_lock_timeout_per_attempt(synced):
    waits: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg_connect() as conn:
            while not stop.is_set():
                began = time.monotonic()
                conn.execute(on_tenant("UPDATE {} SET phone = 'writer' WHERE id = 6", "contacts"))
                waits.append(time.monotonic() - began)
                time.sleep(0.01)

    with psycopg_connect() as idle:
        idle.autocommit = False
        idle.execute(on_tenant("SELECT 1 FROM {} WHERE id = 5", "contacts"))  # a transaction left open
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            with pytest.raises(CommandError, match="not granted within 100 ms") as refused:
                run("migrate_phase", "rollback", "--tenant", "acme_0001", interactive=False, lock_timeout=100)
        finally:
            stop.set()
            thread.join(10)
        idle.rollback()
    assert "\n" not in str(refused.value).strip()
    assert waits
    assert max(waits) < 0.6, max(waits)  # one attempt's wait, not the whole rollback's
    assert twoway.is_synced(TENANT)  # nothing changed for the refused tenant
    run("migrate_phase", "rollback", "--tenant", "acme_0001", interactive=False, lock_timeout=100)
    assert not twoway.is_synced(TENANT)
    assert value(on_tenant("SELECT phone FROM {} WHERE id = 6", "contacts")) == "writer"
