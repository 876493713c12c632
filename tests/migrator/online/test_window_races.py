"""Races the online benchmark found: workers of `data --online` ending their capture at the same time, and
verify's counts under a writer that keeps going."""

from __future__ import annotations

import threading

from psycopg import sql

from migrator.ops import capture
from tests.helpers import run
from tests.migrator.helpers import psycopg_connect, value
from tests.migrator.online.support import CONTACTS, on_tenant


def test_a_worker_that_finds_the_capture_schema_dropped_by_another_one_does_not_fail(schemas_ready):
    capture.ensure_capture_schema()
    with psycopg_connect() as other:
        # another tenant's worker, which found no scope captured, drops the schema and has not committed yet
        other.execute("BEGIN")
        other.execute("SELECT pg_advisory_xact_lock(hashtextextended('migrator online capture setup', 0))")
        other.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(capture.CAPTURE_SCHEMA)))
        commit = threading.Timer(0.5, other.execute, ["COMMIT"])
        commit.start()
        try:
            dropped = capture.drop_capture_schema_if_unused()
        finally:
            commit.join()
    assert dropped is False  # the other one dropped it
    assert value("SELECT to_regnamespace(%s)", [capture.CAPTURE_SCHEMA]) is None


def test_verify_passes_while_the_application_inserts_into_a_tenant_in_two_way_sync(synced):
    stop = threading.Event()
    inserted = []

    def insert() -> None:
        with psycopg_connect() as conn:
            while not stop.is_set():
                row = conn.execute(
                    on_tenant(
                        "INSERT INTO {} (first_name, created_at) VALUES ('During verify', now()) RETURNING id",
                        "contacts",
                    )
                ).fetchone()
                inserted.append(row[0])
                stop.wait(0.002)

    run("migrate_phase", "security", interactive=False)
    writer = threading.Thread(target=insert)
    writer.start()
    try:
        run("migrate_phase", "verify", interactive=False)
    finally:
        stop.set()
        writer.join()
    assert len(inserted) > 10  # the counts moved while verify ran
    found = value(on_tenant("SELECT count(*) FROM {} WHERE id = ANY(%s)", CONTACTS), [inserted])
    assert found == len(inserted)
