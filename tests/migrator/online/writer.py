"""The concurrent writer of the online tests: writes through the legacy names in its own connection, and the
checks that every write it committed reached both sides."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from tests.migrator.helpers import content, plain_columns, psycopg_connect, value, wait_for, wrongly_remapped

TENANT = "tenant_acme_0001"


@dataclass
class Writer:
    """Writes through the legacy names in its own connection and remembers what it committed."""

    stop: threading.Event = field(default_factory=threading.Event)
    phones: dict[int, str] = field(default_factory=dict)  # contact id -> last phone committed
    inserted: set[int] = field(default_factory=set)
    deleted_activities: set[int] = field(default_factory=set)
    touched_activities: set[int] = field(default_factory=set)
    users: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Deadlocks the writer met, counted apart from other errors: the migrator's short locks (two-way sync
    # started, finalize) are taken so that an application transaction is never the victim of one.
    deadlocks: int = 0

    def run(self) -> None:
        rng = random.Random(3)
        with psycopg_connect() as conn:
            conn.prepare_threshold = None
            n = 0
            while not self.stop.is_set():
                n += 1
                started = time.monotonic()
                try:
                    with conn.transaction():
                        self._one(conn, rng, n)
                except psycopg.errors.DeadlockDetected:
                    self.deadlocks += 1
                except psycopg.Error as exc:
                    self.errors.append(str(exc).splitlines()[0])
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.005)

    def _one(self, conn: psycopg.Connection, rng: random.Random, n: int) -> None:
        kind = n % 5
        if kind == 0:
            type_id = conn.execute(
                sql.SQL("SELECT id FROM {} ORDER BY id LIMIT 1").format(sql.Identifier(TENANT, "contact_types"))
            ).fetchone()[0]
            new_id = conn.execute(
                sql.SQL(
                    "INSERT INTO {} (first_name, phone, contact_type_id, created_at) "
                    "VALUES ('Writer', %s, %s, now()) RETURNING id"
                ).format(sql.Identifier(TENANT, "contacts")),
                [f"new {n}", type_id],
            ).fetchone()[0]
            self.inserted.add(new_id)
            self.phones[new_id] = f"new {n}"
        elif kind == 1:
            contact = rng.randint(1, 100)
            if conn.execute(
                sql.SQL("UPDATE {} SET phone = %s WHERE id = %s").format(sql.Identifier(TENANT, "contacts")),
                [f"upd {n}", contact],
            ).rowcount:
                self.phones[contact] = f"upd {n}"
        elif kind == 2:
            activity = rng.randint(1, 240)
            if conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(TENANT, "activities")), [activity]
            ).rowcount:
                self.deleted_activities.add(activity)
        elif kind == 3:
            activity = rng.randint(1, 240)
            if conn.execute(
                sql.SQL("UPDATE {} SET subject = %s WHERE id = %s").format(sql.Identifier(TENANT, "activities")),
                [f"subj {n}", activity],
            ).rowcount:
                self.touched_activities.add(activity)
        elif n % 50 == 4:
            code = f"w{n}"
            conn.execute(
                sql.SQL("INSERT INTO {} (code, name) VALUES (%s, 'by writer')").format(
                    sql.Identifier(TENANT, "contact_types")
                ),
                [code],
            )
            self.types.append(code)
        else:
            email = f"writer{n}@example.com"
            conn.execute(
                "INSERT INTO salesflow_auth.users (email, password_hash, created_at) VALUES (%s, 'x', now())", [email]
            )
            self.users.append(email)


@contextmanager
def writing() -> Iterator[Writer]:
    """A :class:`Writer` in a thread of its own for the block, once it has committed a few writes."""
    writer = Writer()
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(writer.latencies) > 5, what="the writer started")
        yield writer
    finally:
        writer.stop.set()
        thread.join(timeout=30)


TENANT_TABLES = (("contacts", "contact_data_contacts"), ("activities", "activity_data_activities"))


def assert_committed_writes_in_new_tables(writer: Writer) -> None:
    """Every write the writer committed through the legacy names is in the new tables."""
    contacts = sql.Identifier(TENANT, "contact_data_contacts")
    activities = sql.Identifier(TENANT, "activity_data_activities")
    for contact, phone in writer.phones.items():
        assert value(sql.SQL("SELECT phone FROM {} WHERE id = %s").format(contacts), [contact]) == phone, contact
    for activity in writer.deleted_activities:
        assert not value(sql.SQL("SELECT count(*) FROM {} WHERE id = %s").format(activities), [activity]), activity
    for email in writer.users:
        assert value("SELECT count(*) FROM auth.users WHERE email = %s", [email]) == 1, email
    for code in writer.types:
        assert value("SELECT count(*) FROM contact.contact_types WHERE code = %s", [code]) == 1, code


def untouched_rows_differing(schema: str, legacy: str, target: str, touched: set[int]) -> int:
    """Rows of ``schema``'s legacy table (archived by finalize) and its new table that differ, leaving out
    ``touched`` ids and rows the new table got after finalize (above the archived table's highest id)."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in plain_columns(legacy))
    archived = sql.Identifier("salesflow_archive", f"{schema.removeprefix('tenant_')}__{legacy}")
    new = sql.Identifier(schema, target)
    return int(
        value(
            sql.SQL(
                "SELECT count(*) FROM ((SELECT {cols} FROM {archived} EXCEPT SELECT {cols} FROM {new}) "
                "UNION ALL (SELECT {cols} FROM {new} WHERE id <= (SELECT max(id) FROM {archived}) "
                "EXCEPT SELECT {cols} FROM {archived})) d WHERE NOT (d.id = ANY(%s))"
            ).format(cols=cols, archived=archived, new=new),
            [list(touched)],
        )
    )


def assert_sides_equal(schema: str) -> None:
    """The legacy and new tables of ``schema`` hold the same rows (two-way sync), reference ids translated."""
    for legacy, target in TENANT_TABLES:
        cols = plain_columns(legacy)
        assert content(schema, legacy, cols) == content(schema, target, cols), f"{schema}.{legacy}"
        assert wrongly_remapped(schema, legacy) == 0, f"{schema}.{legacy}"
