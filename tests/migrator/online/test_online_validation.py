"""Phase 3's online validation under writers at a high rate: it passes, and every committed write is in the target."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from migrator.ops import capture, twoway
from migrator.tables import LEGACY_AUTH_TABLES
from tests.helpers import run
from tests.migrator.helpers import psycopg_connect, value

TENANTS = ("tenant_acme_0001", "tenant_globex_0002")


# Each writer's pace: four together write twice the 200 transactions/s. Unpaced, they reached
# 2,500/s and spent more CPU than any other test, with nothing more to show.
WRITES_PER_SECOND = 100


@dataclass
class FastWriter:
    """Inserts and updates contacts of the tenants at a steady pace, in its own connection."""

    index: int
    stop: threading.Event
    phones: dict[tuple[str, int], str] = field(default_factory=dict)
    users: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    commits: int = 0

    def run(self) -> None:
        with psycopg_connect() as conn:
            n = 0
            due = time.monotonic()
            while not self.stop.is_set():
                n += 1
                due += 1 / WRITES_PER_SECOND
                # a writer held up (by a lock, say) catches up at once, as an application's backlog would
                self.stop.wait(max(0.0, due - time.monotonic()))
                schema = TENANTS[n % len(TENANTS)]
                contacts = sql.Identifier(schema, "contacts")
                phone = f"w{self.index}-{n}"
                try:
                    with conn.transaction():
                        if n % 4 == 3:
                            conn.execute(
                                "INSERT INTO salesflow_auth.users (email, password_hash, created_at) "
                                "VALUES (%s, 'x', now())",
                                [f"fast{self.index}-{n}@example.com"],
                            )
                            self.users.append(f"fast{self.index}-{n}@example.com")
                        elif n % 4:
                            row = conn.execute(
                                sql.SQL(
                                    "INSERT INTO {c} (first_name, phone, contact_type_id, created_at) "
                                    "SELECT 'Fast', %s, min(id), now() FROM {t} RETURNING id"
                                ).format(c=contacts, t=sql.Identifier(schema, "contact_types")),
                                [phone],
                            ).fetchone()
                            assert row is not None
                            self.phones[(schema, row[0])] = phone
                        else:  # a contact this writer inserted earlier (each writer updates its own)
                            own = [k for k in list(self.phones)[-50:] if k[0] == schema]
                            if own:
                                conn.execute(
                                    sql.SQL("UPDATE {} SET phone = %s WHERE id = %s").format(contacts),
                                    [phone, own[0][1]],
                                )
                                self.phones[own[0]] = phone
                    self.commits += 1
                except psycopg.Error as exc:
                    self.errors.append(str(exc).splitlines()[0])


def run_data_online_under_writers() -> list[FastWriter]:
    """``data --online`` while four writers insert and update. Returns the writers (no sync after it: it ends
    with both sides in two-way sync, every write on both)."""
    stop = threading.Event()
    writers = [FastWriter(i, stop) for i in range(4)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    try:
        time.sleep(0.3)
        run("migrate_phase", "data", "--online", "--batch-size", "100", interactive=False)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert [e for w in writers for e in w.errors] == []
    commits = sum(w.commits for w in writers)
    assert commits / elapsed > 200, f"the writers reached only {commits / elapsed:.0f} transactions/s"
    return writers


def assert_every_write_in_new_tables(writers: list[FastWriter]) -> None:
    for writer in writers:
        for (schema, contact), phone in writer.phones.items():
            got = value(
                sql.SQL("SELECT phone FROM {} WHERE id = %s").format(sql.Identifier(schema, "contact_data_contacts")),
                [contact],
            )
            assert got == phone, (schema, contact)
        for email in writer.users:
            assert value("SELECT count(*) FROM auth.users WHERE email = %s", [email]) == 1, email


def test_online_validation_passes_under_writers_at_a_high_rate(schemas_ready):
    assert_every_write_in_new_tables(run_data_online_under_writers())


def test_capture_left_by_an_earlier_attempt_on_recreated_tables_is_installed_again(schemas_ready):
    """An earlier online attempt stopped before its two-way sync started left its capture bookkeeping
    (every table "captured", copies "ready") and the legacy tables were created anew since (reseeded,
    restored): they have no trigger. ``data --online`` must capture them again, not trust the bookkeeping,
    and end with every scope in two-way sync."""
    capture.ensure_capture_schema()
    stale = [("salesflow_auth", table, ["id"]) for table in LEGACY_AUTH_TABLES] + [
        (schema, table, ["id"])
        for schema in TENANTS
        for table in ("contacts", "activities", "contact_types", "activity_types", "tag_categories")
    ]
    for scope, table, key in stale:
        value(
            sql.SQL("INSERT INTO {} (scope, tbl, key_columns, ready) VALUES (%s, %s, %s, true) RETURNING 1").format(
                capture.CAPTURED_TABLES
            ),
            [scope, table, key],
        )
    writers = run_data_online_under_writers()  # its validation steps pass (run raises otherwise)
    assert_every_write_in_new_tables(writers)
    for scope in {scope for scope, _table, _key in stale}:
        assert twoway.is_synced(scope), scope
        assert twoway.triggers_missing(scope) == [], scope
        assert capture.captured_tables(scope) == {}, scope
    for scope, table, _key in stale:
        assert table in twoway.synced_tables(scope), f"{scope}.{table}"
