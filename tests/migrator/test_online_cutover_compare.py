"""The online cutover's comparison: in full before its lock, only the rows changed since under it."""

from __future__ import annotations

import threading

import pytest
from django.core.management.base import CommandError
from django.db import connection
from psycopg import sql

from migrator.core.context import TenantRef
from migrator.ops import fingerprint
from migrator.phases.data import tenant_copy
from migrator.tables import TENANT_DATA_TABLES
from tests.helpers import run
from tests.migrator.helpers import psycopg_connect, value, wait_for

TENANT = "tenant_acme_0001"


def contacts_copy():
    spec = next(s for s in TENANT_DATA_TABLES if s.legacy_table == "contacts")
    return tenant_copy(TenantRef("acme_0001"), spec)


def test_a_fingerprint_with_some_rows_replaced_is_the_fingerprint_of_the_table(schemas_ready):
    run("migrate_phase", "data", interactive=False)
    copy = contacts_copy()
    target = sql.Identifier(TENANT, "contact_data_contacts")
    whole = fingerprint.target_fingerprint(copy)
    keys = [[1], [2], [3], [900001]]  # updated, updated, deleted, added
    source_before, before = fingerprint.fingerprints_of_keys(copy, keys)
    assert str(source_before) == str(before)
    assert before.rows == 3
    value(sql.SQL("UPDATE {} SET phone = 'replaced' WHERE id IN (1, 2) RETURNING 1").format(target))
    value(sql.SQL("DELETE FROM {} WHERE id = 3 RETURNING 1").format(target))
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in copy.columns if c != "id")
    value(
        sql.SQL("INSERT INTO {t} (id, {c}) SELECT 900001, {c} FROM {t} WHERE id = 4 RETURNING 1").format(
            t=target, c=columns
        )
    )
    after = fingerprint.fingerprints_of_keys(copy, keys)[1]
    assert after.rows == 3
    assert str(fingerprint.replaced(whole, before, after)) == str(fingerprint.target_fingerprint(copy))


def test_cutover_refuses_a_tenant_whose_capture_trigger_is_gone(schemas_ready):
    run("migrate_phase", "data", "--online", interactive=False)
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    with psycopg_connect() as conn:
        conn.execute(sql.SQL("DROP TRIGGER migrator_capture ON {}").format(sql.Identifier(TENANT, "contacts")))
    with pytest.raises(CommandError, match="contacts: its change capture trigger is gone"):
        run("migrate_phase", "cutover", "--tenant", "acme_0001", interactive=False)
    # nothing was switched: the legacy table is still a table, no compatibility view
    assert value("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [f"{TENANT}.contacts"]) == "r"


def test_cutover_refuses_a_tenant_whose_legacy_columns_changed_after_its_full_comparison(schemas_ready):
    run("migrate_phase", "data", "--online", interactive=False)
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    contacts = sql.Identifier(TENANT, "contacts")
    failure: list[BaseException] = []

    def cutover() -> None:
        try:
            run("migrate_phase", "cutover", "--tenant", "acme_0001", "--lock-timeout", "900", interactive=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failure.append(exc)
        finally:
            connection.close()

    with psycopg_connect() as ddl, psycopg_connect() as watcher:
        ours = [r[0] for r in watcher.execute("SELECT pid FROM pg_stat_activity").fetchall()]
        with ddl.transaction():
            # A reader holds the table: the full comparison (reads) goes through, the switch's lock waits.
            ddl.execute(sql.SQL("SELECT count(*) FROM {}").format(contacts))
            worker = threading.Thread(target=cutover)
            worker.start()
            wait_for(
                lambda: watcher.execute(
                    "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE NOT l.granted AND l.relation = to_regclass(%s) AND a.pid <> ALL(%s)",
                    [f"{TENANT}.contacts", ours],
                ).fetchone(),
                timeout=60,
                what="the switch to wait for the legacy table's lock",
            )
            # ... and the application changes the table meanwhile (its own lock comes first: it holds one)
            ddl.execute(sql.SQL("ALTER TABLE {} ADD COLUMN nickname text").format(contacts))
        worker.join(timeout=120)

    assert failure, "cutover switched a tenant whose legacy table changed under it"
    assert isinstance(failure[0], CommandError)
    assert "contacts: its columns changed since the comparison" in str(failure[0])
    assert value("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [f"{TENANT}.contacts"]) == "r"
    assert not value("SELECT count(*) FROM pg_views WHERE schemaname = %s", [TENANT])
