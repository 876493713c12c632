#!/usr/bin/env python
"""Benchmark of the online migration (two-way sync): writers through the legacy names and the new names at a fixed
total rate, from before `data --online` to after `finalize`, against a no-migration baseline on the same data; then a
rollback run.

Run on demand (pytest does not collect it)::

    .venv/bin/python tests/benchmarks/bench_online.py          # 10 tenants, 200,000 + 400,000 rows, 100 tx/s
    .venv/bin/python tests/benchmarks/bench_online.py --tenants 20 --contacts-total 1000000 \\
        --activities-total 2000000 --rate 200                   # the online issue's size
    .venv/bin/python tests/benchmarks/bench_online.py --whale-share 0.5 --range-rows 25000
                                                                # half the rows in one tenant, copied in ranges

The defaults finish in a few minutes on a shared 2-core machine; the second line is the size the online issue asks
for (about three times longer). It works in the database named by ``DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/sf_bench``), creates it when missing and replaces every legacy and migrated
schema in it (it refuses ``salesflow``). Set ``SALESFLOW_ROLE_PREFIX`` when other databases of the server migrate.

The writers (``online_writers.py``): ``--writers`` connections per side sharing ``--rate`` transactions/s, each
transaction an increment of one of ``--hot-rows`` shared rows, a phone update, an insert of a contact and an
activity, a delete or an insert of a user; retried on deadlock, serialization failure and lock timeout (counted).

Migration run: seed; baseline (``--baseline-seconds`` of the legacy writers alone, no migrator); prepare and schemas;
the legacy writers start, ``--settle`` s later `data --online`; once it ends the new-side writers start too; security,
verify, cutover; ``--settle`` s; the legacy writers stop (the old application is switched off), `finalize
--observe-seconds`; ``--settle`` s more of the new-side writers. Rollback run: seed again, the same up to ``--settle``
s after cutover; the new-side writers stop, `rollback` with the legacy writers still running, ``--settle`` s more.
Every committed write is then looked up in the final tables (the new ones after finalize, the legacy ones after the
rollback), and each hot row's final value compared with its committed increments. Results go to stdout and
into this benchmark's section of docs/benchmarks.md (see ``results_doc.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from bench_data_phase import connect, ensure_database, manage, seed, server_facts  # the same setup as phase 3's
from online_writers import LEGACY, NEW, Check, Key, Pace, Side, Workload, Writer, WriterLog, check_writes, reference_ids
from psycopg import sql
from results_doc import write_section

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/sf_bench"
P99_TARGET = 2.0  # window p99 against the baseline's
BLOCKED_TARGET_MS = 1000.0
LATENCY_HEADER = (
    "| write latency by period | writes legacy / new | p50 ms | p99 ms | max ms | p99 legacy | p99 new | p99 / base |"
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Run:
    """One run's writers, its period marks (wall clock) and its commands' durations."""

    env: dict[str, str]
    common: list[str]
    marks: dict[str, float] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    writers: dict[str, list[Writer]] = field(default_factory=dict)

    def phase(self, name: str, *extra: str) -> None:
        log(f"migrate_phase {name} {' '.join(extra)}".strip())
        self.marks[f"{name} start"] = time.time()
        self.durations[name] = manage(self.env, "migrate_phase", name, *extra, *self.common).seconds
        self.marks[f"{name} end"] = time.time()

    def start(self, url: str, side: Side, first_index: int, count: int, work: Workload, pace: Pace) -> None:
        refs = reference_ids(url, side, work.tenants)
        started = [Writer(url, side, first_index + i, work, refs, pace) for i in range(count)]
        for writer in started:
            writer.start()
        self.writers.setdefault(side.name, []).extend(started)
        self.marks[f"{side.name} writers start"] = time.time()

    def stop(self, side: Side) -> None:
        for writer in self.writers.get(side.name, []):
            writer.finish()
        self.marks[f"{side.name} writers stop"] = time.time()

    def logs(self) -> list[WriterLog]:
        return [w.log for ws in self.writers.values() for w in ws]


def tenant_schemas(url: str) -> list[str]:
    with connect(url) as conn:
        return [
            r[0]
            for r in conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'tenant_') ORDER BY 1")
        ]


def fresh_seed(env: dict[str, str], url: str, args: argparse.Namespace) -> None:
    """Seed; an online window a failed run left open is rolled back first (its guard refuses dropping synced
    tables)."""
    with connect(url) as conn:
        window_open = conn.execute("SELECT to_regnamespace('migrator_sync') IS NOT NULL").fetchone()[0]
    if window_open:
        log("an earlier run left the online window open: migrate_phase rollback")
        manage(env, "migrate_phase", "rollback", "--noinput", "-v", "0")
    contacts, activities = tenant_sizes(args)
    extra = []
    if args.whale_share:
        extra = [
            "--first-tenant-contacts",
            str(args.whale_contacts),
            "--first-tenant-activities",
            str(args.whale_activities),
        ]
    seed(env, url, args.tenants, contacts, activities, args.seed, *extra)


def tenant_sizes(args: argparse.Namespace) -> tuple[int, int]:
    """Contacts and activities of every tenant but the whale (all of them without one)."""
    if not args.whale_share:
        return args.contacts_total // args.tenants, args.activities_total // args.tenants
    others = args.tenants - 1
    return (
        (args.contacts_total - args.whale_contacts) // others,
        (args.activities_total - args.whale_activities) // others,
    )


def reset_hot_rows(url: str, tenants: list[str], count: int) -> dict[Key, int]:
    """Hot row k: contact 1 + k // tenants of tenant k % tenants, its owner_id set to 0 before any writer."""
    hot = [(tenants[k % len(tenants)], 1 + k // len(tenants)) for k in range(count)]
    with connect(url) as conn:
        for schema, contact in hot:
            conn.execute(
                sql.SQL("UPDATE {} SET owner_id = 0 WHERE id = %s").format(sql.Identifier(schema, "contacts")),
                [contact],
            )
    return dict.fromkeys(hot, 0)


def blocked_ms(url: str) -> dict[str, dict[str, tuple[float, int]]]:
    """scope -> step -> (writes_blocked_ms, attempts) of start_two_way_sync, cutover and finish_sync."""
    found: dict[str, dict[str, tuple[float, int]]] = {}
    with connect(url) as conn:
        for step, scope, ms, attempts in conn.execute(
            "SELECT step, target, (details ->> 'writes_blocked_ms')::float, coalesce((details ->> 'attempts')::int, 1) "
            "FROM public.schema_migrations WHERE step IN ('start_two_way_sync', 'archive_legacy', 'finish_sync') "
            "AND status = 'COMPLETED' AND details ? 'writes_blocked_ms' ORDER BY target"
        ):
            found.setdefault(scope, {})[step] = (ms, attempts)
    return found


def whale_facts(url: str, whale: str) -> dict[str, float]:
    """The whale's ranges: copied, validated, and compared at cutover; and its steps' durations in seconds."""
    facts: dict[str, float] = {}
    with connect(url) as conn:
        for phase, step, n in conn.execute(
            "SELECT phase, step, count(*) FROM public.schema_migrations WHERE tenant_id = %s "
            "AND step IN ('copy_range', 'validate_range') AND status = 'COMPLETED' GROUP BY 1, 2",
            [whale.removeprefix("tenant_")],
        ):
            facts[f"{phase} {step}"] = n
        for step, seconds in conn.execute(
            "SELECT step, max(extract(epoch FROM duration)) FROM public.schema_migrations "
            "WHERE tenant_id = %s AND step IN ('copy_table', 'validate', 'start_two_way_sync', 'archive_legacy', "
            "'finish_sync') AND status = 'COMPLETED' GROUP BY 1",
            [whale.removeprefix("tenant_")],
        ):
            facts[f"{step} s"] = float(seconds)
    return facts


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def latency_row(name: str, latencies: list[tuple[float, float, str]], baseline_p99: float | None) -> str:
    if not latencies:
        return f"| {name} | 0 | — | — | — | — | — | — |"
    ordered = sorted(lat for _t, lat, _s in latencies)
    p99 = percentile(ordered, 0.99)
    sides = Counter(side for _t, _l, side in latencies)
    per_side = []
    for side in ("legacy", "new"):
        own = sorted(lat for _t, lat, s in latencies if s == side)
        per_side.append(f"{percentile(own, 0.99):.1f}" if own else "—")
    ratio = f"{p99 / baseline_p99:.2f}x" if baseline_p99 else "—"
    return (
        f"| {name} | {sides['legacy']:,} / {sides['new']:,} | {percentile(ordered, 0.5):.1f} | {p99:.1f} | "
        f"{ordered[-1] * 1000:.1f} | {per_side[0]} | {per_side[1]} | {ratio} |"
    )


def in_window(run: Run, start: str, end: str) -> list[tuple[float, float, str]]:
    low, high = run.marks[start], run.marks[end]
    return [x for log_ in run.logs() for x in log_.latencies if low <= x[0] < high]


def check_rows(check: Check, run: Run) -> list[str]:
    retries: Counter[str] = Counter()
    errors: list[str] = []
    for log_ in run.logs():
        retries.update(log_.retries)
        errors += log_.errors
    retry_text = ", ".join(f"{code}: {n}" for code, n in sorted(retries.items())) or "none"
    lost = ", ".join(f"{kind} {n}" for kind, n in sorted(check.lost.items()) if n) or "none"
    rows = [
        f"| writes committed (both sides) | {check.committed:,} |",
        f"| writes lost (a committed write not in the final tables) | {sum(check.lost.values())} ({lost}) |",
        f"| hot-row increments committed / lost updates | {check.increments:,} / {check.lost_updates} |",
        f"| retries (40P01 deadlock, 40001 serialization, 55P03 lock timeout) | {sum(retries.values())} |",
        f"| retries by SQLSTATE | {retry_text} |",
        f"| write errors (not retried) | {len(errors)} |",
    ]
    if errors:
        rows.append(f"| first errors | {'; '.join(sorted(set(errors))[:3])} |")
    return rows


def through_cutover(url: str, args: argparse.Namespace, run: Run, work: Workload, pace: Pace) -> None:
    """The legacy writers, `data --online`, the new-side writers too, phases 4-6, ``--settle`` s more."""
    run.start(url, LEGACY, 0, args.writers, work, pace)
    time.sleep(args.settle)
    run.phase("data", "--online")
    run.start(url, NEW, args.writers, args.writers, work, pace)
    run.phase("security")
    run.phase("verify", *args.verify_options)
    run.phase("cutover")
    time.sleep(args.settle)


def migration_run(
    url: str, args: argparse.Namespace, run: Run
) -> tuple[Check, dict[str, dict[str, tuple[float, int]]]]:
    tenants = tenant_schemas(url)
    hot = reset_hot_rows(url, tenants, args.hot_rows)
    sizes = tenant_sizes(args)  # the writers pick ids every tenant has, the whale's included
    work = Workload(tenants, *sizes, list(hot), 2 * args.writers, "m")
    baseline_pace = Pace(args.rate)
    log(f"baseline: legacy writers alone for {args.baseline_seconds:g} s (no migrator)")
    baseline = Run(run.env, run.common)
    baseline.start(
        url, LEGACY, 0, args.writers, Workload(tenants, *sizes, list(hot), 2 * args.writers, "b"), baseline_pace
    )
    time.sleep(args.baseline_seconds)
    baseline.stop(LEGACY)
    run.marks["baseline start"], run.marks["baseline end"] = baseline.marks["legacy writers start"], time.time()
    run.writers["baseline"] = baseline.writers["legacy"]
    run.phase("prepare")
    run.phase("schemas")
    pace = Pace(args.rate)
    through_cutover(url, args, run, work, pace)
    run.stop(LEGACY)
    run.phase("finalize", "--observe-seconds", f"{args.observe_seconds:g}")
    time.sleep(args.settle)
    run.stop(NEW)
    run.marks["end"] = time.time()
    log("checking every committed write in the new tables")
    return check_writes(url, run.logs(), NEW, hot), blocked_ms(url)


def rollback_run(url: str, args: argparse.Namespace, run: Run) -> Check:
    tenants = tenant_schemas(url)
    hot = reset_hot_rows(url, tenants, args.hot_rows)
    sizes = tenant_sizes(args)  # the writers pick ids every tenant has, the whale's included
    work = Workload(tenants, *sizes, list(hot), 2 * args.writers, "r")
    pace = Pace(args.rate)
    run.phase("prepare")
    run.phase("schemas")
    through_cutover(url, args, run, work, pace)
    run.stop(NEW)  # the new version is switched off; the old one keeps writing through the rollback
    run.phase("rollback")
    time.sleep(args.settle)
    run.stop(LEGACY)
    run.marks["end"] = time.time()
    log("checking every committed write in the legacy tables")
    return check_writes(url, run.logs(), LEGACY, hot)


def report(
    args: argparse.Namespace,
    facts: dict[str, str],
    migration: Run,
    check: Check,
    blocked: dict[str, dict[str, tuple[float, int]]],
    rollback: Run | None,
    rollback_check: Check | None,
    whale: dict[str, float] | None = None,
) -> str:
    rows = args.contacts_total + args.activities_total
    baseline = sorted(lat for _t, lat, _s in in_window(migration, "baseline start", "baseline end"))
    baseline_p99 = percentile(baseline, 0.99) if baseline else None
    periods = [
        ("baseline (no migration, legacy writers only)", "baseline start", "baseline end"),
        ("before the copy", "legacy writers start", "data start"),
        ("during `data --online`", "data start", "data end"),
        ("between phases (security, verify)", "data end", "cutover start"),
        ("at cutover", "cutover start", "cutover end"),
        ("after cutover (legacy writers stop at its end)", "cutover end", "finalize start"),
        ("during finalize (new side only)", "finalize start", "finalize end"),
        ("after finalize", "finalize end", "end"),
    ]
    window = in_window(migration, "data start", "end")
    window_p99 = percentile(sorted(lat for _t, lat, _s in window), 0.99) if window else 0.0
    starts = [v["start_two_way_sync"][0] for v in blocked.values() if "start_two_way_sync" in v]
    finishes = [v["finish_sync"][0] for v in blocked.values() if "finish_sync" in v]
    worst = max([*starts, *finishes], default=0.0)
    d = migration.durations
    lines = [
        f"## Online migration benchmark (two-way sync) — {date.today().isoformat()}",
        "",
        (
            f"{facts.get('server', '?')}; {os.cpu_count()} CPU cores (shared). {args.tenants} tenants, "
            f"{args.contacts_total:,} contacts + {args.activities_total:,} activities = {rows:,} tenant rows; "
            f"`--jobs {args.jobs}`; writers: {args.rate:g} transactions/s in all, {args.writers} connections per side "
            f"(legacy names: `tenant_x.contacts`, `salesflow_auth.users`; new names: `tenant_x.contact_data_contacts`, "
            f"`auth.users`), {args.hot_rows} hot rows incremented from both sides; legacy writers from "
            f"{args.settle:g} s before `data --online` until `finalize`, new-side writers from the end of "
            f"`data --online` until "
            f"{args.settle:g} s after `finalize --observe-seconds {args.observe_seconds:g}`; baseline: "
            f"{args.baseline_seconds:g} s of the legacy writers alone on the same data, before phase 1."
        ),
        "",
        "| migration run | |",
        "|---|---:|",
        *check_rows(check, migration),
        (
            f"| writes blocked per scope, `start_two_way_sync` p50 / max | "
            f"{statistics.median(starts) if starts else 0:.0f} / {max(starts, default=0):.0f} ms |"
        ),
        (
            f"| writes blocked per scope, `finish_sync` (finalize) p50 / max | "
            f"{statistics.median(finishes) if finishes else 0:.0f} / {max(finishes, default=0):.0f} ms |"
        ),
        f"| target: writes blocked < {BLOCKED_TARGET_MS:.0f} ms | {'met' if worst < BLOCKED_TARGET_MS else 'MISSED'} |",
        (
            f"| write p99 from `data --online` to the end / baseline p99 | {window_p99:.1f} / "
            f"{baseline_p99 or 0:.1f} ms = {window_p99 / baseline_p99 if baseline_p99 else 0:.2f}x "
            f"(target <= {P99_TARGET:g}x: "
            f"{'met' if baseline_p99 and window_p99 <= P99_TARGET * baseline_p99 else 'MISSED'}) |"
        ),
        (
            f"| `data --online` / security + verify / cutover / finalize | {d['data']:.1f} / "
            f"{d['security'] + d['verify']:.1f} / {d['cutover']:.1f} / {d['finalize']:.1f} s |"
        ),
        "",
        LATENCY_HEADER,
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[latency_row(name, in_window(migration, a, b), baseline_p99) for name, a, b in periods],
        "",
        "| hot row | increments committed | final `owner_id` |",
        "|---|---:|---:|",
        *[f"| {key[0]}.contacts id {key[1]} | {n:,} | {final:,} |" for key, n, final in check.hot_rows],
        "",
        (
            "| scope | `start_two_way_sync` writes blocked (attempts) | cutover writes blocked | "
            "`finish_sync` writes blocked (attempts) |"
        ),
        "|---|---:|---:|---:|",
        *[
            f"| {scope} | "
            + " | ".join(
                f"{v[step][0]:.0f} ms ({v[step][1]})" if step in v else "—"
                for step in ("start_two_way_sync", "archive_legacy", "finish_sync")
            )
            + " |"
            for scope, v in sorted(blocked.items())
        ],
    ]
    if whale is not None:
        scope = args.whale_scope
        whale_rows = args.whale_contacts + args.whale_activities
        whale_worst = max((v[0] for v in blocked.get(scope, {}).values()), default=0.0)
        lines += [
            "",
            (
                f"Whale tenant `{scope}`: {args.whale_contacts:,} contacts + {args.whale_activities:,} activities "
                f"({args.whale_share:.0%} of the rows), written by the writers of both sides like every tenant; "
                f"`SALESFLOW_RANGE_ROWS={args.range_rows or 'default'}`."
            ),
            "",
            "| whale tenant | |",
            "|---|---:|",
            (
                f"| key ranges copied / validated (`data --online`) / compared at cutover | "
                f"{whale.get('data copy_range', 0):.0f} / {whale.get('data validate_range', 0):.0f} / "
                f"{whale.get('cutover validate_range', 0):.0f} |"
            ),
            (
                f"| longest `copy_table` / `validate` / cutover step | {whale.get('copy_table s', 0):.1f} / "
                f"{whale.get('validate s', 0):.1f} / {whale.get('archive_legacy s', 0):.1f} s |"
            ),
            (
                "| writes blocked at `start_two_way_sync` / cutover / `finish_sync` | "
                + " / ".join(
                    f"{blocked.get(scope, {}).get(step, (0.0, 0))[0]:.0f} ms"
                    for step in ("start_two_way_sync", "archive_legacy", "finish_sync")
                )
                + f" ({whale_rows:,} rows) |"
            ),
            (
                f"| target: the whale's writes blocked < {BLOCKED_TARGET_MS:.0f} ms | "
                f"{'met' if whale_worst < BLOCKED_TARGET_MS else 'MISSED'} |"
            ),
        ]
    if rollback is not None and rollback_check is not None:
        at_rollback = sorted(lat for _t, lat, _s in in_window(rollback, "rollback start", "rollback end"))
        lines += [
            "",
            (
                "Rollback run (seeded again): the same writers and phases up to cutover, "
                f"{args.settle:g} s more, the new-side writers stop, `rollback` with the legacy writers running, "
                f"{args.settle:g} s more; every committed write of either side looked up in the legacy tables."
            ),
            "",
            "| rollback run | |",
            "|---|---:|",
            *check_rows(rollback_check, rollback),
            f"| `rollback` | {rollback.durations['rollback']:.1f} s |",
            (
                f"| legacy writes during `rollback`, p50 / p99 / max | {percentile(at_rollback, 0.5):.1f} / "
                f"{percentile(at_rollback, 0.99):.1f} / {at_rollback[-1] * 1000:.1f} ms ({len(at_rollback)} writes) |"
                if at_rollback
                else "| legacy writes during `rollback` | none |"
            ),
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--contacts-total", type=int, default=200_000)
    parser.add_argument("--activities-total", type=int, default=400_000)
    parser.add_argument("--rate", type=float, default=100.0, help="write transactions/s across both sides")
    parser.add_argument("--writers", type=int, default=4, help="writer connections per side")
    parser.add_argument("--hot-rows", type=int, default=4, help="rows every writer increments")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of writes around the phases")
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--observe-seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--whale-share",
        type=float,
        default=0.0,
        help="share of all rows in the first tenant (e.g. 0.5: a whale tenant; default 0: equal tenants)",
    )
    parser.add_argument(
        "--range-rows", type=int, default=None, help="SALESFLOW_RANGE_ROWS for the run (default: the setting's)"
    )
    parser.add_argument("--skip-rollback", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write docs/benchmarks.md")
    args = parser.parse_args()
    args.verify_options = ["--load-seconds", "2", "--load-max-regression", "100000"]
    args.whale_contacts = round(args.contacts_total * args.whale_share)
    args.whale_activities = round(args.activities_total * args.whale_share)

    url = os.environ.get("DATABASE_URL", "").strip() or DEFAULT_URL
    ensure_database(url)
    backups = Path(tempfile.mkdtemp(prefix="sf-bench-online-"))
    env = {**os.environ, "DATABASE_URL": url, "SALESFLOW_BACKUP_DIR": str(backups), "PYTHONWARNINGS": "ignore"}
    # service roles are cluster-wide: a prefix of its own keeps clear of other databases' migrations
    env.setdefault("SALESFLOW_ROLE_PREFIX", "sfbench_online")
    if args.range_rows:
        env["SALESFLOW_RANGE_ROWS"] = str(args.range_rows)
    common = ["--noinput", "--jobs", str(args.jobs), "-v", "0"]
    facts = server_facts(url)
    rollback = rollback_check = None
    try:
        log("seeding (migration run)")
        fresh_seed(env, url, args)
        migration = Run(env, common)
        check, blocked = migration_run(url, args, migration)
        if args.whale_share:  # the seed's first tenant: its id ends in _0001
            args.whale_scope = next(t for t in tenant_schemas(url) if t.endswith("_0001"))
        whale = whale_facts(url, args.whale_scope) if args.whale_share else None
        if not args.skip_rollback:
            log("seeding (rollback run)")
            fresh_seed(env, url, args)
            rollback = Run(env, common)
            rollback_check = rollback_run(url, args, rollback)
    finally:
        shutil.rmtree(backups, ignore_errors=True)
    text = report(args, facts, migration, check, blocked, rollback, rollback_check, whale)
    print(text)
    if not args.no_write:
        write_section("bench_online", text, heading="## Online mode: `bench_online.py`")


if __name__ == "__main__":
    main()
