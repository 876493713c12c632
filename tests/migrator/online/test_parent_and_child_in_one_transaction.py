"""``data --online`` while the application writes a contact and its activity in one transaction: the rows
written during a table's copy are applied before its foreign keys are rebuilt, so both are there."""

from __future__ import annotations

import threading
import time

from psycopg import sql

from migrator.config import get_config
from tests.migrator.helpers import manage, manage_env, psycopg_connect, value
from tests.migrator.online.support import ACTIVITIES, CONTACTS

SCHEMA = "tenant_acme_0001"


def test_data_online_carries_contacts_and_activities_written_together(larger_schemas_ready):
    stop = threading.Event()
    written: list[int] = []
    failures: list[Exception] = []

    def application() -> None:
        try:
            write_pairs()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    def write_pairs() -> None:
        with psycopg_connect() as conn:
            while not stop.is_set():
                with conn.transaction():
                    contact = conn.execute(
                        sql.SQL("INSERT INTO {} (first_name, created_at) VALUES ('Pair', now()) RETURNING id").format(
                            sql.Identifier(SCHEMA, "contacts")
                        )
                    ).fetchone()[0]
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (contact_id, activity_type_id, subject, created_at) "
                            "SELECT %s, min(id), 'pair', now() FROM {}"
                        ).format(sql.Identifier(SCHEMA, "activities"), sql.Identifier(SCHEMA, "activity_types")),
                        [contact],
                    )
                written.append(contact)
                # An application's pace, not a loop that outruns the copy: unpaced, the capture the copy must
                # catch up with grows as fast as it is applied (half a minute of both cores for the same check).
                time.sleep(0.003)

    writer = threading.Thread(target=application)
    writer.start()
    try:
        env = manage_env(SALESFLOW_ROLE_PREFIX=get_config().role_prefix)
        result = manage("migrate_phase", "data", "--online", "--noinput", "--batch-size", "500", env=env, timeout=600)
    finally:
        stop.set()
        writer.join(30)
    assert not failures, failures
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(written) > 20
    pairs = sql.SQL("SELECT count(*) FROM {} a JOIN {} c ON c.id = a.contact_id WHERE c.first_name = 'Pair'").format(
        sql.Identifier(SCHEMA, ACTIVITIES), sql.Identifier(SCHEMA, CONTACTS)
    )
    assert value(pairs) == len(written)
