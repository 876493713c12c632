"""The application of ``bench_online.py``: writer connections through the legacy names or the new names at a
shared fixed rate, what each one committed, and the check of every committed write in the final tables.

A writer is one connection in autocommit mode running one transaction at a time, cycling through five kinds:
an increment of a hot row's ``owner_id`` (a few rows every writer of both sides increments: the final value must
be the number of committed increments), an update of a contact's phone (each writer updates only contacts whose
``id % writers`` is its own, so the last phone it committed is the one the table must hold), an insert of a
contact and an activity of it, a delete (of a seeded activity, or of a contact and activity it inserted itself)
and an insert of a user. A transaction that fails with a deadlock, a serialization failure or a lock timeout
(the two-way sync waits 500 ms for the other side's row, then gives up with 55P03) is retried as an application
retries it, after a random pause growing with the attempt (up to 20 ms times the attempt: two writers that met on
a row from opposite sides do not meet again at once), and counted; its latency runs from the first attempt to the
commit.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import errors, sql

RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure, errors.LockNotAvailable)
MAX_ATTEMPTS = 100

Key = tuple[str, int]  # (tenant schema, row id)


@dataclass(frozen=True)
class Side:
    """The table names one application version writes."""

    name: str
    contacts: str
    activities: str
    users: tuple[str, str]
    contact_types: tuple[str, str] | None  # None: the tenant's own legacy reference table
    activity_types: tuple[str, str] | None


LEGACY = Side("legacy", "contacts", "activities", ("salesflow_auth", "users"), None, None)
NEW = Side(
    "new",
    "contact_data_contacts",
    "activity_data_activities",
    ("auth", "users"),
    ("contact", "contact_types"),
    ("activity", "activity_types"),
)


class Pace:
    """A fixed total rate shared by whichever writers are running: each waits ``running / rate`` between its
    transactions, so the total stays at ``rate`` as writers of one side start or stop."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.running = 0
        self._lock = threading.Lock()

    def join(self) -> None:
        with self._lock:
            self.running += 1

    def leave(self) -> None:
        with self._lock:
            self.running -= 1

    def interval(self) -> float:
        with self._lock:
            return max(self.running, 1) / self.rate


@dataclass
class WriterLog:
    """What one writer committed; latencies as (wall clock at the start, seconds, side)."""

    phones: dict[Key, str] = field(default_factory=dict)
    inserted: dict[Key, tuple[str, int]] = field(default_factory=dict)  # contact -> (phone, its activity)
    deleted_contacts: list[tuple[str, int, int]] = field(default_factory=list)
    deleted_activities: list[Key] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    increments: Counter[Key] = field(default_factory=Counter)
    latencies: list[tuple[float, float, str]] = field(default_factory=list)
    committed: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Workload:
    """What every writer of one run shares."""

    tenants: list[str]
    contacts: int  # seeded contacts per tenant (ids 1..contacts)
    activities: int
    hot: list[Key]
    writers: int  # writer connections of both sides: a writer's own contacts are id % writers == its index
    label: str  # keeps e-mails of separate runs on one database apart


def reference_ids(url: str, side: Side, tenants: list[str]) -> dict[str, tuple[int, int]]:
    """Per tenant, the contact type and activity type ids an insert through ``side`` uses: the tenant's first
    legacy code, as the shared row of that code on the new side."""
    found = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in tenants:
            ids = []
            for legacy, shared in (("contact_types", side.contact_types), ("activity_types", side.activity_types)):
                first = sql.SQL("(SELECT code FROM {} ORDER BY id LIMIT 1)").format(sql.Identifier(schema, legacy))
                query = (
                    sql.SQL("SELECT id FROM {} WHERE code = {}").format(sql.Identifier(*shared), first)
                    if shared
                    else sql.SQL("SELECT min(id) FROM {}").format(sql.Identifier(schema, legacy))
                )
                row = conn.execute(query).fetchone()
                assert row is not None, f"{schema}: no {legacy} row"
                assert row[0] is not None, f"{schema}: no {legacy} row"
                ids.append(int(row[0]))
            found[schema] = (ids[0], ids[1])
    return found


class Writer:
    """One connection's loop; ``index`` is its place among ``Workload.writers``."""

    def __init__(
        self, url: str, side: Side, index: int, work: Workload, refs: dict[str, tuple[int, int]], pace: Pace
    ) -> None:
        self.url, self.side, self.index, self.work, self.refs, self.pace = url, side, index, work, refs, pace
        self.rng = random.Random(f"{work.label}-{side.name}-{index}")
        self.log = WriterLog()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"{side.name}-{index}")

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=120)

    def _table(self, schema: str, table: str) -> sql.Identifier:
        return sql.Identifier(schema, table)

    def _run(self) -> None:
        self.pace.join()
        try:
            with psycopg.connect(self.url, autocommit=True, application_name=f"bench-online-{self.side.name}") as conn:
                next_at = time.monotonic()
                n = 0
                while not self.stop.is_set():
                    n += 1
                    work, record = self._next(n)
                    started_wall, started = time.time(), time.monotonic()
                    if self._attempt(conn, work, record):
                        self.log.latencies.append((started_wall, time.monotonic() - started, self.side.name))
                    next_at += self.pace.interval()
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        self.stop.wait(delay)
                    else:
                        next_at = time.monotonic()  # behind (a blocked write): no burst to catch up
        finally:
            self.pace.leave()

    def _attempt(
        self, conn: psycopg.Connection, work: Callable[[psycopg.Connection], object], record: Callable[[object], None]
    ) -> bool:
        for attempt in range(MAX_ATTEMPTS):
            try:
                with conn.transaction():
                    result = work(conn)
            except RETRYABLE as exc:
                self.log.retries[exc.sqlstate or "?"] += 1
                time.sleep(random.uniform(0, 0.02) * (attempt + 1))
                continue
            except psycopg.Error as exc:
                self.log.errors.append(f"{self.side.name}: {str(exc).splitlines()[0]}")
                return False
            self.log.committed += 1
            record(result)
            return True
        self.log.errors.append(f"{self.side.name}: gave up after {MAX_ATTEMPTS} attempts")
        return False

    def _next(self, n: int) -> tuple[Callable[[psycopg.Connection], object], Callable[[object], None]]:
        """The n-th transaction (its random choices made once, so a retry repeats it) and what to note if it
        commits."""
        rng, work, side, log = self.rng, self.work, self.side, self.log
        schema = rng.choice(work.tenants)
        contacts, activities = self._table(schema, side.contacts), self._table(schema, side.activities)
        kind = n % 5
        if kind == 0:
            hot = rng.choice(work.hot)
            query = sql.SQL("UPDATE {} SET owner_id = owner_id + 1 WHERE id = %s").format(
                self._table(hot[0], side.contacts)
            )

            def increment(conn: psycopg.Connection) -> object:
                return conn.execute(query, [hot[1]]).rowcount

            def noted(rows: object) -> None:
                if rows != 1:
                    log.errors.append(f"{side.name}: hot row {hot} matched {rows} rows")
                log.increments[hot] += rows  # type: ignore[operator]

            return increment, noted
        if kind == 1:
            first = self.index or work.writers
            contact = rng.randrange(first, work.contacts + 1, work.writers) if work.contacts >= first else 1
            phone = f"{work.label}-{side.name}{self.index}-{n}"
            query = sql.SQL("UPDATE {} SET phone = %s WHERE id = %s").format(contacts)

            def update(conn: psycopg.Connection) -> object:
                return conn.execute(query, [phone, contact]).rowcount

            def updated(rows: object) -> None:
                if rows:
                    log.phones[(schema, contact)] = phone

            return update, updated
        if kind == 2:
            phone = f"{work.label}-new-{side.name}{self.index}-{n}"
            contact_type, activity_type = self.refs[schema]

            def insert(conn: psycopg.Connection) -> object:
                contact_row = conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (first_name, phone, contact_type_id, created_at) "
                        "VALUES ('Bench', %s, %s, now()) RETURNING id"
                    ).format(contacts),
                    [phone, contact_type],
                ).fetchone()
                assert contact_row is not None
                activity_row = conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (contact_id, activity_type_id, subject, created_at) "
                        "VALUES (%s, %s, 'bench', now()) RETURNING id"
                    ).format(activities),
                    [contact_row[0], activity_type],
                ).fetchone()
                assert activity_row is not None
                return contact_row[0], activity_row[0]

            def inserted(ids: object) -> None:
                contact_id, activity_id = ids  # type: ignore[misc]
                log.inserted[(schema, contact_id)] = (phone, activity_id)

            return insert, inserted
        if kind == 3:
            own = [k for k in log.inserted if k[0] == schema]
            if n % 2 and own:
                key = own[0]
                activity = log.inserted[key][1]

                def delete_own(conn: psycopg.Connection) -> object:
                    conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(activities), [activity])
                    return conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(contacts), [key[1]]).rowcount

                def deleted_own(rows: object) -> None:
                    del log.inserted[key]
                    log.deleted_contacts.append((schema, key[1], activity))
                    if rows != 1:
                        log.errors.append(f"{side.name}: own contact {key} matched {rows} rows")

                return delete_own, deleted_own
            activity = rng.randint(1, work.activities)

            def delete(conn: psycopg.Connection) -> object:
                return conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(activities), [activity]).rowcount

            def deleted(rows: object) -> None:
                if rows:
                    log.deleted_activities.append((schema, activity))

            return delete, deleted
        email = f"{work.label}-{side.name}{self.index}-{n}@bench.example"

        def add_user(conn: psycopg.Connection) -> object:
            return conn.execute(
                sql.SQL("INSERT INTO {} (email, password_hash, created_at) VALUES (%s, 'x', now())").format(
                    sql.Identifier(*side.users)
                ),
                [email],
            ).rowcount

        return add_user, lambda _rows: log.users.append(email)


@dataclass
class Check:
    """Every committed write looked up in the final tables."""

    committed: int = 0
    lost: Counter[str] = field(default_factory=Counter)
    increments: int = 0
    lost_updates: int = 0  # committed increments of hot rows not in their final value (or extra ones)
    hot_rows: list[tuple[Key, int, int]] = field(default_factory=list)  # (row, committed increments, final value)


def check_writes(url: str, logs: list[WriterLog], side: Side, hot_start: dict[Key, int]) -> Check:
    """``logs`` in the order they ran (a later log's phone of a contact wins); ``side``: the final tables."""
    result = Check(committed=sum(log.committed for log in logs))
    phones: dict[Key, str] = {}
    inserted: dict[Key, tuple[str, int]] = {}
    deleted_contacts: list[tuple[str, int, int]] = []
    deleted_activities: list[Key] = []
    increments: Counter[Key] = Counter()
    for log in logs:
        phones.update(log.phones)
        inserted.update(log.inserted)
        deleted_contacts += log.deleted_contacts
        deleted_activities += log.deleted_activities
        increments.update(log.increments)
    with psycopg.connect(url, autocommit=True) as conn:

        def rows(schema: str, table: str, column: str, ids: list[int]) -> dict[int, object]:
            query = sql.SQL("SELECT id, {} FROM {} WHERE id = ANY(%s)").format(
                sql.Identifier(column), sql.Identifier(schema, table)
            )
            return {r[0]: r[1] for r in conn.execute(query, [ids])}

        for schema in sorted(
            {k[0] for k in [*phones, *inserted, *deleted_activities]} | {d[0] for d in deleted_contacts}
        ):
            found = rows(schema, side.contacts, "phone", [k[1] for k in [*phones, *inserted] if k[0] == schema])
            result.lost["phone updates"] += sum(found.get(k[1]) != v for k, v in phones.items() if k[0] == schema)
            result.lost["contacts inserted"] += sum(
                found.get(k[1]) != v[0] for k, v in inserted.items() if k[0] == schema
            )
            activities = rows(
                schema, side.activities, "contact_id", [v[1] for k, v in inserted.items() if k[0] == schema]
            )
            result.lost["activities inserted"] += sum(
                activities.get(v[1]) != k[1] for k, v in inserted.items() if k[0] == schema
            )
            gone = [d for d in deleted_contacts if d[0] == schema]
            result.lost["contacts deleted"] += len(rows(schema, side.contacts, "id", [d[1] for d in gone]))
            ids = [a[1] for a in deleted_activities if a[0] == schema] + [d[2] for d in gone]
            result.lost["activities deleted"] += len(rows(schema, side.activities, "id", ids))
        emails = [e for log in logs for e in log.users]
        query = sql.SQL("SELECT count(*) FROM {} WHERE email = ANY(%s)").format(sql.Identifier(*side.users))
        result.lost["users inserted"] += len(emails) - conn.execute(query, [emails]).fetchone()[0]
        for key, start in sorted(hot_start.items()):
            value = rows(key[0], side.contacts, "owner_id", [key[1]]).get(key[1])
            final = int(value) if isinstance(value, int) else -1
            result.hot_rows.append((key, increments[key], final))
            result.increments += increments[key]
            result.lost_updates += abs(start + increments[key] - final)
    return result
