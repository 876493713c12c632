#!/usr/bin/env python
"""Benchmark of phase 3 with a whale tenant: the same rows spread evenly, in one tenant, in one half-tenant.

Run on demand (pytest does not collect it: the name has no ``test_`` prefix)::

    .venv/bin/python tests/benchmarks/bench_whale.py                       # 3,000,000 rows, 3 rounds
    .venv/bin/python tests/benchmarks/bench_whale.py --rows 1500000 --rounds 1

It works in the database named by ``DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/sf_bench``), creates it when missing, and replaces every legacy
and migrated schema in it: never point it at a database that holds anything you need.

The same rows (a third contacts, two thirds activities, ``seed_legacy``) in three shapes:

(i)   ``--tenants`` (20) equal tenants;
(ii)  one tenant with all rows;
(iii) one tenant with half the rows and ``--tenants`` - 1 small ones sharing the other half.

Per shape and round, on freshly seeded rows (then VACUUM ANALYZE, phases prepare and schemas):
``migrate_phase data --jobs N`` (copy and validation: the phase's wall clock) and then
``migrate_phase data --validate-only --jobs N`` (the validation alone). The copy is the first minus the
second. The rounds go shape by shape side by side (i, ii, iii, i, ii, iii, ...), so that a slow moment of
the shared machine hits every shape alike; the best of each is reported, with the ratios of (ii) and
(iii) to (i). The results go to stdout and to their section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data_phase import (  # the sibling script's helpers
    DEFAULT_URL,
    checkpoint,
    connect,
    ensure_database,
    manage,
    phase,
    registry_exists,
    server_facts,
    vacuum_legacy,
)
from results_doc import write_section

SHAPES = ("i", "ii", "iii")
TARGET_RATIO = 0.9


@dataclass(frozen=True)
class Shape:
    name: str
    tenants: int
    contacts: int  # per tenant
    activities: int
    first_contacts: int  # the first tenant's
    first_activities: int

    @property
    def rows(self) -> int:
        return self.first_contacts + self.first_activities + (self.tenants - 1) * (self.contacts + self.activities)

    def describe(self) -> str:
        if self.tenants == 1:
            return f"1 tenant: {self.first_contacts:,} contacts + {self.first_activities:,} activities"
        if self.first_contacts == self.contacts:
            return f"{self.tenants} tenants of {self.contacts:,} contacts + {self.activities:,} activities"
        return (
            f"1 tenant of {self.first_contacts:,} + {self.first_activities:,}, {self.tenants - 1} of "
            f"{self.contacts:,} + {self.activities:,}"
        )


def shapes(rows: int, tenants: int) -> dict[str, Shape]:
    contacts, activities = rows // 3, rows - rows // 3
    even_c, even_a = contacts // tenants, activities // tenants
    half_c, half_a = contacts // 2, activities // 2
    small_c, small_a = (contacts - half_c) // (tenants - 1), (activities - half_a) // (tenants - 1)
    return {
        "i": Shape("i", tenants, even_c, even_a, even_c, even_a),
        "ii": Shape("ii", 1, contacts, activities, contacts, activities),
        "iii": Shape("iii", tenants, small_c, small_a, half_c, half_a),
    }


@dataclass
class Measured:
    data: float  # migrate_phase data (copy + validation)
    validate: float  # migrate_phase data --validate-only
    ranges: int  # copy ranges recorded

    @property
    def copy(self) -> float:
        return self.data - self.validate


def log(message: str) -> None:
    print(f"-- {message}", file=sys.stderr, flush=True)


def seed(env: dict[str, str], url: str, shape: Shape, seed_value: int) -> None:
    args = [
        "seed_legacy",
        "--tenants",
        str(shape.tenants),
        "--contacts",
        str(shape.contacts),
        "--activities",
        str(shape.activities),
        "--first-tenant-contacts",
        str(shape.first_contacts),
        "--first-tenant-activities",
        str(shape.first_activities),
        "--seed",
        str(seed_value),
    ]
    if registry_exists(url):
        args += ["--replace", "--noinput"]
    manage(env, *args)


def one_round(env: dict[str, str], url: str, shape: Shape, jobs: int, seed_value: int) -> Measured:
    started = time.perf_counter()
    seed(env, url, shape, seed_value)
    vacuum_legacy(url)
    phase(env, "prepare", jobs)
    phase(env, "schemas", jobs)
    log(f"  ({shape.name}) seeded and prepared in {time.perf_counter() - started:.0f} s")
    checkpoint(url)
    data = phase(env, "data", jobs).seconds
    checkpoint(url)
    validate = phase(env, "data", jobs, "--validate-only").seconds
    with connect(url) as conn:
        ranges = conn.execute(
            "SELECT count(*) FROM public.schema_migrations WHERE step = 'copy_range' AND status = 'COMPLETED'"
        ).fetchone()[0]
    return Measured(data, validate, int(ranges))


def report(args: argparse.Namespace, facts: dict[str, str], by_shape: dict[str, list[Measured]]) -> str:
    layout = shapes(args.rows, args.tenants)
    rows = layout["i"].rows
    best = {
        name: (
            min(m.data for m in runs),
            min(m.copy for m in runs),
            min(m.validate for m in runs),
        )
        for name, runs in by_shape.items()
    }
    heading = f"## Phase 3 with a whale tenant (bench_whale) — {date.today().isoformat()}"
    machine = (
        f"{facts['server']}; {os.cpu_count()} CPU cores; Python {platform.python_version()}; shared_buffers "
        f"{facts['shared_buffers']}, max_wal_size {facts['max_wal_size']}, max_parallel_maintenance_workers "
        f"{facts['max_parallel_maintenance_workers']}."
    )
    method = (
        f"The same {rows:,} rows (a third contacts, two thirds activities; `seed_legacy --seed {args.seed}`) in three "
        f"shapes; `migrate_phase data --jobs {args.jobs}` (copy and validation), then `migrate_phase data "
        f"--validate-only --jobs {args.jobs}` (validation); copy = the first minus the second. "
        f"`SALESFLOW_RANGE_ROWS` {args.range_rows:,}. Best of {args.rounds} rounds, shapes side by side in each round."
    )
    columns = (
        "| shape | tenants | copy ranges | phase 3 s (best) | rows/s | copy s | copy rows/s | validation s "
        "| validation rows/s | each round: phase 3 / validation (s) |"
    )
    lines = [heading, "", machine, "", method, "", columns, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name in SHAPES:
        if name not in by_shape:
            continue
        data, copy, validate = best[name]
        runs = by_shape[name]
        lines.append(
            f"| ({name}) | {layout[name].describe()} | {runs[-1].ranges} | {data:.1f} | {rows / data:,.0f} "
            f"| {copy:.1f} | {rows / copy:,.0f} | {validate:.1f} | {rows / validate:,.0f} | "
            + ", ".join(f"{m.data:.1f} / {m.validate:.1f}" for m in runs)
            + " |"
        )
    lines += [
        "",
        "| throughput ratio to (i) | phase 3 | copy | validation | target |",
        "|---|---:|---:|---:|---|",
    ]
    for name in ("ii", "iii"):
        if name not in best or "i" not in best:
            continue
        ratios = [best["i"][k] / best[name][k] for k in range(3)]
        lines.append(
            f"| ({name}) / (i) | {ratios[0]:.2f} | {ratios[1]:.2f} | {ratios[2]:.2f} | >= {TARGET_RATIO} "
            f"({'met' if min(ratios) >= TARGET_RATIO else 'MISSED'}) |"
        )
    return "\n".join(lines)


def write_results(text: str) -> None:
    write_section("bench_whale", text, heading="## Whale tenants: `bench_whale.py`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3_000_000, help="rows of every shape (default 3,000,000)")
    parser.add_argument("--tenants", type=int, default=20, help="tenants of shapes (i) and (iii) (default 20)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--range-rows", type=int, default=100_000, help="SALESFLOW_RANGE_ROWS (default 100,000)")
    parser.add_argument("--shapes", default="i,ii,iii")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; do not write docs/benchmarks.md")
    args = parser.parse_args()
    wanted = [s for s in args.shapes.split(",") if s in SHAPES]

    url = os.environ.get("DATABASE_URL", "").strip() or DEFAULT_URL
    ensure_database(url)
    backups = Path(tempfile.mkdtemp(prefix="sf-bench-backups-"))
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SALESFLOW_BACKUP_DIR": str(backups),
        "SALESFLOW_RANGE_ROWS": str(args.range_rows),
        "PYTHONWARNINGS": "ignore",
    }
    facts = server_facts(url)
    layout = shapes(args.rows, args.tenants)
    by_shape: dict[str, list[Measured]] = {name: [] for name in wanted}
    for number in range(1, args.rounds + 1):
        for name in wanted:
            log(f"round {number}/{args.rounds}, shape ({name}): {layout[name].describe()}")
            measured = one_round(env, url, layout[name], args.jobs, args.seed)
            by_shape[name].append(measured)
            log(
                f"  phase 3 {measured.data:.1f} s (copy {measured.copy:.1f} s, validation {measured.validate:.1f} s), "
                f"{measured.ranges} copy ranges"
            )
    text = report(args, facts, by_shape)
    print(text)
    if not args.no_write:
        write_results(text)


if __name__ == "__main__":
    main()
