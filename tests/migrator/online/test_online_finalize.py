"""``migrate_phase finalize``: the two-way sync stops and the legacy tables are archived only once the
application no longer writes them (or --force)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.core.management.base import CommandError
from psycopg import sql

from migrator.tables import LEGACY_AUTH_TABLES, LEGACY_TENANT_TABLES
from tests.helpers import legacy_fingerprints, run
from tests.migrator.helpers import catalog_snapshot, psycopg_connect, value, wait_for
from tests.migrator.online.support import migrate_online_until_cutover

TENANT = "tenant_acme_0001"


class LegacyWriter:
    """Old application code: updates contacts and adds users through the legacy names, until stopped."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.committed = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg_connect() as conn:
            while not self.stop.is_set():
                try:
                    with conn.transaction():
                        conn.execute(
                            sql.SQL("UPDATE {} SET phone = %s WHERE id = 1").format(sql.Identifier(TENANT, "contacts")),
                            [f"p{self.committed}"],
                        )
                        conn.execute(
                            "INSERT INTO salesflow_auth.users (email, password_hash, created_at) "
                            "VALUES (%s, 'x', now())",
                            [f"finalize{self.committed}@example.com"],
                        )
                    self.committed += 1
                except psycopg.Error as exc:
                    self.errors.append(str(exc).splitlines()[0])
                time.sleep(0.02)

    def __enter__(self) -> LegacyWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def sync_triggers() -> int:
    return value("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'salesflow_sync%%'")


def legacy_tables_left() -> int:
    return value(
        "SELECT count(*) FROM pg_tables WHERE (schemaname = %s AND tablename = ANY(%s)) "
        "OR (schemaname = 'salesflow_auth' AND tablename = ANY(%s))",
        [TENANT, list(LEGACY_TENANT_TABLES), list(LEGACY_AUTH_TABLES)],
    )


def archived_tables() -> int:
    return value("SELECT count(*) FROM pg_tables WHERE schemaname = 'salesflow_archive'")


def test_finalize_is_refused_while_the_legacy_tables_are_written_and_archives_them_after(schemas_ready):
    migrate_online_until_cutover()
    run("migrate_phase", "cutover", interactive=False)
    triggers = sync_triggers()
    assert triggers > 0
    assert legacy_tables_left() == len(LEGACY_TENANT_TABLES) + len(LEGACY_AUTH_TABLES)
    with LegacyWriter() as writer:
        wait_for(lambda: writer.committed > 2, what="the writer wrote through the legacy names")
        with pytest.raises(CommandError) as refused:
            run("migrate_phase", "finalize", observe_seconds=0.5, interactive=False)
    message = str(refused.value)
    assert "\n" not in message.strip()
    assert f"{TENANT}.contacts (" in message
    assert "salesflow_auth.users (" in message
    assert "--force" in message
    assert writer.errors == []
    assert writer.committed > 0
    # nothing changed: the sync goes on, the legacy tables are where they were
    assert sync_triggers() == triggers
    assert legacy_tables_left() == len(LEGACY_TENANT_TABLES) + len(LEGACY_AUTH_TABLES)
    # the writer is gone: no legacy table is written in the window now
    out = run("migrate_phase", "finalize", observe_seconds=0.2, interactive=False)
    assert "legacy tables archived" in out
    assert legacy_tables_left() == 0
    assert value("SELECT to_regclass('salesflow_archive.acme_0001__contacts') IS NOT NULL")
    assert value("SELECT to_regclass('salesflow_archive.salesflow_auth__users') IS NOT NULL")
    assert sync_triggers() == 0
    assert value("SELECT to_regnamespace('migrator_sync')") is None
    # the new tables keep what was written through the legacy names, and so does the archive
    for contacts in ("tenant_acme_0001.contact_data_contacts", "salesflow_archive.acme_0001__contacts"):
        schema, table = contacts.split(".")
        phone = value(sql.SQL("SELECT phone FROM {} WHERE id = 1").format(sql.Identifier(schema, table)))
        assert phone == f"p{writer.committed - 1}", contacts
    assert value("SELECT count(*) FROM auth.users WHERE email LIKE 'finalize%%'") == writer.committed


def test_finalize_force_archives_the_legacy_tables_while_they_are_written(schemas_ready):
    migrate_online_until_cutover()
    run("migrate_phase", "cutover", interactive=False)
    with LegacyWriter() as writer:
        wait_for(lambda: writer.committed > 2, what="the writer wrote through the legacy names")
        started = time.monotonic()
        run("migrate_phase", "finalize", force=True, interactive=False)
        took = time.monotonic() - started
        wait_for(lambda: writer.errors, what="the writer met the archived tables")
    assert took < 5  # no observation window
    assert legacy_tables_left() == 0
    assert archived_tables() == len(LEGACY_TENANT_TABLES) * 3 + len(LEGACY_AUTH_TABLES)
    assert sync_triggers() == 0
    assert writer.committed > 0
    assert writer.errors  # old code through the legacy names now fails: that is what --force accepts
    assert "does not exist" in writer.errors[-1]
    assert value("SELECT count(*) FROM auth.users WHERE email LIKE 'finalize%%'") == writer.committed


def test_finalize_without_two_way_sync_does_nothing(migrated):
    before = catalog_snapshot()
    fingerprints = legacy_fingerprints(migrated["tenants"])
    run("migrate_phase", "finalize", interactive=False)
    assert catalog_snapshot() == before
    assert legacy_fingerprints(migrated["tenants"]) == fingerprints
    assert sync_triggers() == 0
