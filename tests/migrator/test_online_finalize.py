"""``migrate_phase finalize``: the compatibility views are dropped only once nothing uses them (or --force)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.core.management.base import CommandError
from psycopg import sql

from tests.helpers import run
from tests.migrator.helpers import psycopg_connect, value, wait_for
from tests.migrator.test_online import migrate_online_until_cutover

TENANT = "tenant_acme_0001"


class ViewWriter:
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

    def __enter__(self) -> ViewWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def compat_views() -> int:
    return value(
        "SELECT count(*) FROM pg_class WHERE relkind = 'v' AND obj_description(oid, 'pg_class') LIKE %s",
        ["salesflow migrator%"],
    )


def test_finalize_is_refused_while_a_view_is_used_and_drops_them_after(schemas_ready):
    migrate_online_until_cutover()
    run("migrate_phase", "cutover", interactive=False)
    views = compat_views()
    assert views > 0
    with ViewWriter() as writer:
        time.sleep(0.3)
        # a backend publishes its statistics at most once a second: a window of 1.5 s holds one at least
        with pytest.raises(CommandError) as refused:
            run("migrate_phase", "finalize", observe_seconds=1.5, interactive=False)
    message = str(refused.value)
    assert "\n" not in message.strip()
    assert f"{TENANT}.contacts (" in message
    assert "salesflow_auth.users (" in message
    assert "--force" in message
    assert writer.errors == []
    assert writer.committed > 0
    assert compat_views() == views  # nothing dropped
    # the writer is gone (its connection closed and its statistics flushed): nothing uses the views now,
    # which any window shows
    time.sleep(0.6)
    out = run("migrate_phase", "finalize", observe_seconds=0.2, interactive=False)
    assert "dropped" in out
    assert compat_views() == 0
    assert value("SELECT to_regnamespace('migrator_compat')") is None
    assert value("SELECT to_regclass(%s)", [f"{TENANT}.contacts"]) is None
    assert value("SELECT count(*) FROM pg_proc WHERE proname LIKE 'migrator_compat%%'") == 0
    # the new tables keep what was written through the views
    assert (
        value(sql.SQL("SELECT phone FROM {} WHERE id = 1").format(sql.Identifier(TENANT, "contact_data_contacts")))
        == f"p{writer.committed - 1}"
    )
    assert value("SELECT count(*) FROM auth.users WHERE email LIKE 'finalize%%'") == writer.committed


def test_finalize_force_drops_the_views_while_they_are_used(schemas_ready):
    migrate_online_until_cutover()
    run("migrate_phase", "cutover", interactive=False)
    with ViewWriter() as writer:
        wait_for(lambda: writer.committed > 2, what="the writer wrote through the views")
        started = time.monotonic()
        run("migrate_phase", "finalize", force=True, interactive=False)
        took = time.monotonic() - started
        wait_for(lambda: writer.errors, what="the writer met the dropped views")
    assert took < 5  # no observation window
    assert compat_views() == 0
    assert writer.committed > 0
    assert writer.errors  # old code through the legacy names now fails: that is what --force accepts
    assert "does not exist" in writer.errors[-1]


def test_finalize_without_compatibility_views_does_nothing(migrated):
    run("migrate_phase", "finalize", interactive=False)
    assert compat_views() == 0
