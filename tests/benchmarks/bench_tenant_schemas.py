#!/usr/bin/env python
"""Benchmark of the per-tenant cost of phase 2 (``migrate_phase schemas``) and of a no-op ``migrate_schemas``.

Run on demand (pytest does not collect it: the name has no ``test_`` prefix)::

    .venv/bin/python tests/benchmarks/bench_tenant_schemas.py --tenants 200 1000 --jobs 2

For each tenant count it builds a fresh database (``DATABASE_URL``, default
``postgresql://postgres@127.0.0.1:5432/sf_bench_tenants``; dropped and created again: never point it at
a database you need, ``salesflow`` is refused), seeds it with ``seed_legacy --tenants N --contacts 50
--activities 100``, runs ``migrate_phase prepare``, then times, each as its own ``manage.py`` process
(process start included):

- ``migrate_phase schemas --jobs J`` on the freshly prepared database (no catalog statistics yet);
- ``migrate_phase schemas`` again: nothing to do;
- ``migrate_schemas`` (django-tenants, every schema) with nothing to apply: what a deploy costs.

The figures go to stdout as a markdown table.

``--no-dump``: phase 1's ``pg_dump`` locks every table of the database in one transaction; a server with
the default lock table (``max_locks_per_transaction`` 64 x ``max_connections`` 100) cannot dump ~1,000
seeded tenants ("out of shared memory"). With ``--no-dump`` the benchmark marks its scratch database
as a rehearsal copy and runs prepare with ``--rehearsal-backup`` on a placeholder manifest: prepare
records that instead of dumping (its time then leaves the dump out); nothing else changes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/sf_bench_tenants"
REFUSED_DATABASES = {"salesflow", "postgres", "template0", "template1"}


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def recreate_database(url: str) -> None:
    name = database_name(url)
    if name in REFUSED_DATABASES:
        raise SystemExit(f"refusing to benchmark in database {name!r}: point DATABASE_URL at a scratch database")
    maintenance = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def manage(env: dict[str, str], *args: str) -> float:
    """Run ``manage.py args`` and return its wall clock in seconds; a failure ends the benchmark."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise SystemExit(f"manage.py {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    return elapsed


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def placeholder_backup(url: str, backups: str) -> str:
    """Mark the scratch database as a rehearsal copy and write a manifest prepare can record (``--no-dump``)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(database_name(url)),
                sql.Literal(f"SalesFlow migrator rehearsal copy of database {database_name(url)} (benchmark)"),
            )
        )
    dump = Path(backups) / "placeholder"
    dump.mkdir(exist_ok=True)
    manifest = {"path": str(dump), "size": 0, "sha256": "0" * 64, "toc_entries": 1, "server_major": 15}
    Path(f"{dump}.manifest.json").write_text(json.dumps({**manifest, "created_at": time.strftime("%FT%T")}))
    return str(dump)


def measure(url: str, tenants: int, jobs: int, backups: str, no_dump: bool) -> dict[str, float]:
    env = {**os.environ, "DATABASE_URL": url, "SALESFLOW_BACKUP_DIR": backups, "PYTHONWARNINGS": "ignore"}
    recreate_database(url)
    log(f"{tenants} tenants: seeding")
    manage(env, "seed_legacy", "--tenants", str(tenants), "--contacts", "50", "--activities", "100")
    log(f"{tenants} tenants: prepare")
    prepare = ["migrate_phase", "prepare", "--noinput", "--jobs", str(jobs)]
    if no_dump:
        prepare += ["--rehearsal-backup", placeholder_backup(url, backups)]
    times = {"prepare (no dump)" if no_dump else "prepare": manage(env, *prepare)}
    log(f"{tenants} tenants: schemas")
    times["schemas"] = manage(env, "migrate_phase", "schemas", "--jobs", str(jobs))
    log(f"{tenants} tenants: schemas again (nothing to do)")
    times["schemas rerun"] = manage(env, "migrate_phase", "schemas", "--jobs", str(jobs))
    log(f"{tenants} tenants: migrate_schemas (nothing to apply)")
    times["migrate_schemas no-op"] = manage(env, "migrate_schemas", "--noinput")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[200, 1000], help="tenant counts to measure")
    parser.add_argument("--jobs", type=int, default=2, help="--jobs of the phases (default 2)")
    parser.add_argument("--no-dump", action="store_true", help="prepare records a placeholder backup (see above)")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "").strip() or DEFAULT_URL
    print("| tenants | step | wall (s) | per tenant (ms) |\n|---:|---|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-tenant-schemas-") as backups:
        for tenants in args.tenants:
            for step, seconds in measure(url, tenants, args.jobs, backups, args.no_dump).items():
                print(f"| {tenants} | {step} | {seconds:.1f} | {seconds * 1000 / tenants:.1f} |", flush=True)


if __name__ == "__main__":
    main()
