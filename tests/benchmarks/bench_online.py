#!/usr/bin/env python
"""Benchmark of the online migration: `migrate_phase all --online` under a writer at a fixed rate, against the
offline `migrate_phase all` on the same data.

Run on demand (pytest does not collect it)::

    .venv/bin/python tests/benchmarks/bench_online.py                      # 20 tenants, 3,000,000 rows, 200 tx/s
    .venv/bin/python tests/benchmarks/bench_online.py --contacts-total 100000 --activities-total 200000

It works in the database named by ``DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/sf_bench``),
creates it when missing and replaces every legacy and migrated schema in it (it refuses ``salesflow``).

One round: seed, `all` offline (timed, no writer); seed again with the same seed, start the writer (``--writers``
connections sharing ``--rate`` transactions/s across all tenants, each an update of a contact, an insert of a
contact, a delete of an activity or an insert of a user, through the legacy names, which are compatibility views
after cutover), `all --online` (timed), writer stopped ``--settle`` seconds later. Reported: writes committed and
lost (each committed write looked up in the new tables), write latency p50/p99/max before, during and after the
copy, at cutover and after it, the capture lag sampled every half second, the backlog cutover applied and how long
it took to converge (cutover's wall clock: the last changes applied and every tenant switched), each tenant's
``writes_blocked_ms``, and both total times. Results go to stdout and into this
benchmark's section of docs/benchmarks.md (see ``results_doc.py``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import psycopg
from bench_data_phase import connect, ensure_database, manage, seed, server_facts  # the same setup as phase 3's
from psycopg import sql
from results_doc import BENCHMARKS_DOC, write_section

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/sf_bench"


@dataclass
class WriterLog:
    """What one writer connection committed, and how long each transaction took (wall start, seconds)."""

    phones: dict[tuple[str, int], str] = field(default_factory=dict)
    inserted: list[tuple[str, int]] = field(default_factory=list)
    deleted: list[tuple[str, int]] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def write(
    url: str,
    index: int,
    writers: int,
    rate: float,
    tenants: list[str],
    sizes: tuple[int, int],
    stop: threading.Event,
    log: WriterLog,
) -> None:
    """``rate`` transactions/s (its share) until ``stop``; contacts ``id % writers == index`` are its own to update,
    so the last phone it committed is the one the new table must hold."""
    rng = random.Random(index)
    contacts, activities = sizes
    interval = 1.0 / rate
    with psycopg.connect(url, autocommit=True, application_name="bench-online-writer") as conn:
        next_at = time.monotonic()
        n = 0
        while not stop.is_set():
            next_at += interval
            n += 1
            schema = rng.choice(tenants)
            started_wall, started = time.time(), time.monotonic()
            try:
                with conn.transaction():
                    kind = n % 4
                    if kind == 0:
                        contact = rng.randrange(index + writers, contacts + 1, writers) if contacts > writers else 1
                        phone = f"w{index}-{n}"
                        cur = conn.execute(
                            sql.SQL("UPDATE {} SET phone = %s WHERE id = %s").format(
                                sql.Identifier(schema, "contacts")
                            ),
                            [phone, contact],
                        )
                        if cur.rowcount:
                            log.phones[(schema, contact)] = phone
                    elif kind == 1:
                        row = conn.execute(
                            sql.SQL(
                                "INSERT INTO {c} (first_name, phone, contact_type_id, created_at) "
                                "SELECT 'Bench', %s, min(id), now() FROM {t} RETURNING id"
                            ).format(c=sql.Identifier(schema, "contacts"), t=sql.Identifier(schema, "contact_types")),
                            [f"new{index}-{n}"],
                        ).fetchone()
                        assert row is not None
                        log.inserted.append((schema, row[0]))
                    elif kind == 2:
                        activity = rng.randint(1, activities)
                        cur = conn.execute(
                            sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(schema, "activities")),
                            [activity],
                        )
                        if cur.rowcount:
                            log.deleted.append((schema, activity))
                    else:
                        email = f"bench{index}-{n}@example.com"
                        conn.execute(
                            "INSERT INTO salesflow_auth.users (email, password_hash, created_at) "
                            "VALUES (%s, 'x', now())",
                            [email],
                        )
                        log.users.append(email)
            except psycopg.Error as exc:
                log.errors.append(str(exc).splitlines()[0])
            log.latencies.append((started_wall, time.monotonic() - started))
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind (a blocked write): no burst to catch up


def sample_lag(url: str, stop: threading.Event, samples: list[tuple[float, int, float]]) -> None:
    with psycopg.connect(url, autocommit=True, application_name="bench-online-lag") as conn:
        while not stop.is_set():
            if conn.execute("SELECT to_regclass('migrator_online.changes') IS NOT NULL").fetchone()[0]:
                try:
                    pending, oldest = conn.execute(
                        "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(captured_at)), 0) "
                        "FROM migrator_online.changes"
                    ).fetchone()
                    samples.append((time.time(), int(pending), float(oldest)))
                except psycopg.Error:
                    pass  # cutover dropped the capture schema between the two statements
            stop.wait(0.5)


def phase_window(url: str, phase: str) -> tuple[float, float]:
    with connect(url) as conn:
        first, last = conn.execute(
            "SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(completed_at)) "
            "FROM public.schema_migrations WHERE phase = %s AND status = 'COMPLETED'",
            [phase],
        ).fetchone()
    return float(first), float(last)


def lost_writes(url: str, logs: list[WriterLog]) -> tuple[int, int]:
    """(committed, lost): every committed write looked up in the new tables."""
    committed = lost = 0
    with connect(url) as conn:
        for log in logs:
            for (schema, contact), phone in log.phones.items():
                committed += 1
                got = conn.execute(
                    sql.SQL("SELECT phone FROM {} WHERE id = %s").format(
                        sql.Identifier(schema, "contact_data_contacts")
                    ),
                    [contact],
                ).fetchone()
                lost += got is None or got[0] != phone
            for schema, contact in log.inserted:
                committed += 1
                lost += not conn.execute(
                    sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(sql.Identifier(schema, "contact_data_contacts")),
                    [contact],
                ).fetchone()
            for schema, activity in log.deleted:
                committed += 1
                lost += bool(
                    conn.execute(
                        sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(
                            sql.Identifier(schema, "activity_data_activities")
                        ),
                        [activity],
                    ).fetchone()
                )
            committed += len(log.users)
            found = conn.execute("SELECT count(*) FROM auth.users WHERE email = ANY(%s)", [log.users]).fetchone()[0]
            lost += len(log.users) - found
    return committed, lost


def percentiles(values: list[float]) -> str:
    if not values:
        return "— | — | — | 0"
    ordered = sorted(values)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"{p(0.5):.1f} | {p(0.99):.1f} | {ordered[-1] * 1000:.1f} | {len(ordered)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--contacts-total", type=int, default=1_000_000)
    parser.add_argument("--activities-total", type=int, default=2_000_000)
    parser.add_argument("--rate", type=float, default=200.0, help="write transactions/s across all tenants")
    parser.add_argument("--writers", type=int, default=4, help="writer connections sharing --rate")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of writes before and after the run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument("--no-write", action="store_true", help=f"print only; do not write {BENCHMARKS_DOC.name}")
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", "").strip() or DEFAULT_URL
    ensure_database(url)
    backups = Path(tempfile.mkdtemp(prefix="sf-bench-online-"))
    env = {**os.environ, "DATABASE_URL": url, "SALESFLOW_BACKUP_DIR": str(backups), "PYTHONWARNINGS": "ignore"}
    # service roles are cluster-wide: a prefix of its own keeps clear of other databases' migrations
    env.setdefault("SALESFLOW_ROLE_PREFIX", "sfbench_online")
    contacts, activities = args.contacts_total // args.tenants, args.activities_total // args.tenants
    common = [
        "--noinput",
        "--jobs",
        str(args.jobs),
        "-v",
        "0",
        "--load-seconds",
        "2",
        "--load-max-regression",
        "100000",
    ]
    facts = server_facts(url)
    try:
        offline = None
        if not args.skip_offline:
            print("seeding (offline run)", flush=True)
            seed(env, url, args.tenants, contacts, activities, args.seed)
            print("migrate_phase all", flush=True)
            offline = manage(env, "migrate_phase", "all", *common).seconds
        print("seeding (online run)", flush=True)
        seed(env, url, args.tenants, contacts, activities, args.seed)
        with connect(url) as conn:
            tenants = [
                r[0]
                for r in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'tenant_') ORDER BY 1"
                )
            ]
        stop, lag_stop = threading.Event(), threading.Event()
        logs = [WriterLog() for _ in range(args.writers)]
        samples: list[tuple[float, int, float]] = []
        threads = [
            threading.Thread(
                target=write,
                args=(url, i, args.writers, args.rate / args.writers, tenants, (contacts, activities), stop, logs[i]),
                daemon=True,
            )
            for i in range(args.writers)
        ] + [threading.Thread(target=sample_lag, args=(url, lag_stop, samples), daemon=True)]
        for thread in threads:
            thread.start()
        time.sleep(args.settle)
        print("migrate_phase all --online (writer running)", flush=True)
        run_started = time.time()
        online = manage(env, "migrate_phase", "all", "--online", *common).seconds
        run_ended = time.time()
        time.sleep(args.settle)
        stop.set()
        lag_stop.set()
        for thread in threads:
            thread.join(timeout=60)
        data_window, cutover_window = phase_window(url, "data"), phase_window(url, "cutover")
        committed, lost = lost_writes(url, logs)
        with connect(url) as conn:
            blocked = [
                float(r[0])
                for r in conn.execute(
                    "SELECT (details ->> 'writes_blocked_ms')::float FROM public.schema_migrations "
                    "WHERE phase = 'cutover' AND status = 'COMPLETED' AND details ? 'writes_blocked_ms'"
                )
            ]
            backlog = conn.execute(
                "SELECT coalesce(sum((details ->> 'last_changes')::int), 0) FROM public.schema_migrations "
                "WHERE phase = 'cutover' AND status = 'COMPLETED'"
            ).fetchone()[0]
    finally:
        shutil.rmtree(backups, ignore_errors=True)

    latencies = [x for log in logs for x in log.latencies]
    errors = [e for log in logs for e in log.errors]
    windows = [
        ("before the copy", run_started - args.settle, data_window[0]),
        ("during the copy (phase 3)", data_window[0], data_window[1]),
        ("after the copy (phases 4-5)", data_window[1], cutover_window[0]),
        ("at cutover (phase 6)", cutover_window[0], cutover_window[1]),
        ("after cutover (views)", cutover_window[1], run_ended + args.settle),
    ]
    lag_rows = [
        f"| {t - run_started:.1f} | {pending:,} | {oldest:.1f} |"
        for t, pending, oldest in samples[:: max(1, len(samples) // 20)]
    ]
    rows = args.contacts_total + args.activities_total
    lines = [
        f"### Online migration benchmark — {date.today().isoformat()}",
        "",
        (
            f"PostgreSQL {facts.get('server', '?')}; {os.cpu_count()} CPU cores. "
            f"{args.tenants} tenants, {args.contacts_total:,} contacts + {args.activities_total:,} activities "
            f"= {rows:,} tenant rows; `--jobs {args.jobs}`; writer: {args.rate:g} transactions/s across all tenants "
            f"on {args.writers} connections, through the legacy names (views after cutover), from {args.settle:g} s "
            f"before `all --online` until {args.settle:g} s after it."
        ),
        "",
        "| | |",
        "|---|---:|",
        f"| writes committed | {committed:,} |",
        f"| writes lost (committed, not in the new tables) | {lost} |",
        f"| write errors | {len(errors)} |",
        f"| `all` offline (no writer) | {offline:.1f} s |" if offline is not None else "| `all` offline | not run |",
        f"| `all --online` (writer running) | {online:.1f} s |",
        f"| phase 3 (`data --online`) | {data_window[1] - data_window[0]:.1f} s |",
        f"| backlog cutover applied (changes) | {backlog:,} |",
        (
            f"| time to converge (cutover: backlog applied, every tenant switched) | "
            f"{cutover_window[1] - cutover_window[0]:.1f} s |"
        ),
        (
            f"| writes blocked per tenant at cutover, p50 / max | "
            f"{statistics.median(blocked) if blocked else 0:.0f} ms / {max(blocked) if blocked else 0:.0f} ms |"
        ),
        (
            f"| largest lag sampled | {max((s[1] for s in samples), default=0):,} changes, "
            f"{max((s[2] for s in samples), default=0):.1f} s |"
        ),
        "",
        "| write latency | p50 ms | p99 ms | max ms | writes |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {name} | {percentiles([lat for t, lat in latencies if start <= t < end])} |"
            for name, start, end in windows
        ],
        "",
        "| lag: s since the start | changes captured, not applied | oldest (s) |",
        "|---:|---:|---:|",
        *lag_rows,
    ]
    if errors:
        lines += ["", "First write errors: " + "; ".join(sorted(set(errors))[:5])]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        # this run replaces the last one's section; the hand-written notes around it stay
        written = write_section("bench_online", text, heading="## Online mode: `bench_online.py`")
        print(f"written to {written}")


if __name__ == "__main__":
    main()
