"""A rehearsal: the phase-1 backup restored into a scratch database on the same server, phases run
there by ``manage.py migrate_phase all`` in a child process, and a report with a projection of the real run.

The real database is only read (row and tenant counts); everything the rehearsal creates lives in
the scratch database, plus the service roles of the scratch run (cluster-wide, under their own
prefix). A journal file beside the backups names both while they exist, so a rehearsal killed at
any moment is cleaned up by the next one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection
from psycopg import sql

from migrator import catalog, db
from migrator.config import MigratorConfig
from migrator.core.errors import MigrationError
from migrator.ops import backup
from migrator.ops.backup import BackupInfo
from migrator.ops.databases import create_database_like, database_comment, database_oid, drop_database
from migrator.ops.rehearsal_report import FailedStep, LegacyVolume, PhaseProjection, PhaseRun, Projection
from migrator.tables import TENANT_DATA_TABLES
from salesflow.layout import SERVICES, TENANT_SCHEMA_LIKE


@dataclass(frozen=True)
class PhaseToRun:
    """A phase the scratch run (``migrate_phase all``) goes through, in order, as the phase registry says:
    its name and whether its time grows with the legacy rows (the others' grows with the tenants)."""

    name: str
    scales_with_rows: bool


# The projection's upper bound allows this much for a busier server and non-linear growth (index builds).
PROJECTION_MARGIN = 1.25
RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})
MAX_IDENTIFIER_BYTES = 63


def seconds_text(seconds: float) -> str:
    """12.3 s, 4 min 5 s, 2 h 10 min: durations in the report's messages."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def database_marker(source_database: str) -> str:
    """The comment on a scratch database: only a database carrying it is dropped without --replace."""
    return f"SalesFlow migrator rehearsal copy of database {source_database}"


def rehearsal_role_prefix(config: MigratorConfig) -> str:
    """Service roles of the scratch run: roles are cluster-wide, so never the real run's names."""
    return f"{config.role_prefix}_rehearsal"


def journal_path(config: MigratorConfig) -> Path:
    return config.backup_dir / f"rehearsal-in-progress-{connection.settings_dict['NAME']}.json"


def default_target(source_database: str) -> str:
    return f"{source_database}_rehearsal"


def check_target_name(name: str, source_database: str) -> None:
    if not name or len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise MigrationError(
            f"scratch database name {name!r} must be 1 to {MAX_IDENTIFIER_BYTES} bytes; "
            "choose a shorter one with --target-database"
        )
    if name == source_database or name in RESERVED_DATABASES:
        raise MigrationError(
            f"the rehearsal cannot use database {name!r}; choose a scratch database with --target-database"
        )


def server_connection() -> psycopg.Connection[Any]:
    """An autocommit session on the real database's server (CREATE/DROP DATABASE take no transaction)."""
    return db.connect_like_django("salesflow-migrator-rehearsal")


# --- the scratch database and its roles ------------------------------------------------------------------


def drop_rehearsal_roles(conn: psycopg.Connection[Any], prefix: str, scratch: str) -> list[str]:
    """Service roles the scratch run created (marked by phase 4 with the scratch database's name)."""
    marker = f"service role created by the SalesFlow migrator for database {scratch}"
    dropped = []
    for service in SERVICES:
        role = f"{prefix}_{service}"
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", [role]
        ).fetchone()
        if row is not None and row[0] == marker:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
            dropped.append(role)
    return dropped


def clean_up_leftovers(conn: psycopg.Connection[Any], config: MigratorConfig) -> list[str]:
    """Drop what an earlier rehearsal of this database left (killed, or run with --keep)."""
    path = journal_path(config)
    if not path.is_file():
        return []
    try:
        journal = json.loads(path.read_text())
        scratch = str(journal["target_database"])
        prefix = str(journal["role_prefix"])
    except (OSError, ValueError, KeyError, TypeError):
        raise MigrationError(
            f"the rehearsal journal {path} is unreadable; drop the scratch database it named "
            "by hand and delete the file"
        ) from None
    cleaned = []
    if database_comment(conn, scratch) is not None:
        drop_database(conn, scratch)
        cleaned.append(f"database {scratch}")
    cleaned += [f"role {role}" for role in drop_rehearsal_roles(conn, prefix, scratch)]
    path.unlink(missing_ok=True)
    return cleaned


def create_scratch(conn: psycopg.Connection[Any], config: MigratorConfig, name: str, replace: bool) -> None:
    source = connection.settings_dict["NAME"]
    comment = database_comment(conn, name)
    if comment is not None:
        if comment != database_marker(source) and not replace:
            raise MigrationError(
                f"database {name} already exists and is not a rehearsal copy of {source}; "
                "choose another with --target-database or pass --replace to drop it"
            )
        drop_database(conn, name)
    # The journal is written before the database exists: a kill right after CREATE still names it.
    path = journal_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(
        json.dumps(
            {"source_database": source, "target_database": name, "role_prefix": rehearsal_role_prefix(config)}, indent=1
        )
    )
    partial.replace(path)
    source_oid = database_oid(conn, source)
    assert source_oid is not None  # the database this process is connected to
    create_database_like(conn, name, source_oid, same_owner=False)
    conn.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(database_marker(source)))
    )


def finish(conn: psycopg.Connection[Any], config: MigratorConfig, name: str, keep: bool) -> list[str]:
    """Drop the scratch database and its roles unless ``keep`` (the next rehearsal drops a kept copy)."""
    if keep:
        return []
    drop_database(conn, name)
    dropped = drop_rehearsal_roles(conn, rehearsal_role_prefix(config), name)
    journal_path(config).unlink(missing_ok=True)
    return dropped


def restore_into(info: BackupInfo, pg_restore: Path, name: str, jobs: int) -> None:
    try:
        backup.restore_backup(pg_restore, info, jobs, database=name)
    except MigrationError as exc:
        raise MigrationError(f"restoring into the scratch database: {exc}") from None


# --- counts the projection scales by ----------------------------------------------------------------------


def legacy_volume(conn: psycopg.Connection[Any]) -> LegacyVolume:
    """Tenant schemas holding legacy tenant-data tables, and their rows (the rows phase 3 copies)."""
    names = [t.legacy_table for t in TENANT_DATA_TABLES]
    found = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname LIKE %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p') ORDER BY 1, 2",
        [TENANT_SCHEMA_LIKE, names],
    ).fetchall()
    rows = 0
    for schema, table, partitioned in found:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(catalog.own_rows(schema, table, partitioned))
        ).fetchone()
        rows += int(row[0]) if row else 0
    return LegacyVolume(tenants=len({schema for schema, _table, _partitioned in found}), rows=rows)


# --- running the phases in the scratch database ------------------------------------------------------------


def child_env(config: MigratorConfig, scratch: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": db.database_url(scratch),
        "PYTHONUNBUFFERED": "1",
        "SALESFLOW_ROLE_PREFIX": rehearsal_role_prefix(config),
        "SALESFLOW_LEGACY_AUTH_SCHEMA": config.legacy_auth_schema,
        "SALESFLOW_ARCHIVE_SCHEMA": config.archive_schema,
        "SALESFLOW_BACKUP_DIR": str(config.backup_dir),
        "SALESFLOW_PG_BIN_DIRS": os.pathsep.join(config.bin_dirs),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the child reads its settings module from manage.py
    return env


def phase_run(outcome: dict[str, Any], error: str | None) -> PhaseRun:
    """A phase's line of ``migrate_phase all --format jsonl`` as a run of the report."""
    return PhaseRun(
        outcome["phase"],
        ok=bool(outcome["ok"]),
        seconds=float(outcome["elapsed_s"]),
        steps=int(outcome["planned"]),
        rows_moved=int(outcome.get("rows_moved") or 0),
        failed=[FailedStep(f["migration_id"], f["error"]) for f in outcome["failed"]],
        error=None if outcome["ok"] else error,
    )


def run_phases(
    phases: Sequence[PhaseToRun], arguments: list[str], env: dict[str, str], progress: Callable[[int, int], None]
) -> list[PhaseRun]:
    """``manage.py migrate_phase all`` in one child that dies with this process: ``phases`` in order,
    stopping at the first that fails, each reported on its own line as it ends.

    A phase that ends the child without a line of its own (the command refused it, or the child
    died) is reported as failed with the child's last error line.
    """
    command = [
        sys.executable,
        str(Path(settings.BASE_DIR) / "manage.py"),
        "migrate_phase",
        "all",
        "--noinput",
        "--format",
        "jsonl",
        *arguments,
    ]
    preexec = backup._die_with_parent if sys.platform.startswith("linux") else None
    names = [phase.name for phase in phases]
    outcomes: list[dict[str, Any]] = []
    started = time.monotonic()
    # stderr into a file: a pipe read only at the end could fill up and stall the child
    with (
        tempfile.TemporaryFile(mode="w+") as stderr_file,
        subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            preexec_fn=preexec,
        ) as child,
    ):
        for line in child.stdout or ():
            try:
                outcome = json.loads(line)
            except ValueError:
                continue  # not a phase's line
            if isinstance(outcome, dict) and outcome.get("phase") in names:
                outcomes.append(outcome)
                progress(len(outcomes), len(names))
        returncode = child.wait()
        stderr_file.seek(0)
        stderr = stderr_file.read()
    error_lines = [line for line in stderr.strip().splitlines() if line.strip()]
    error = error_lines[-1].removeprefix("CommandError: ") if returncode and error_lines else None
    runs = [phase_run(outcome, error) for outcome in outcomes]
    if returncode and all(r.ok for r in runs):  # the child ended before it could report the phase it was in
        error = error or f"migrate_phase all exited {returncode}"
        if len(runs) < len(names):
            seconds = max(time.monotonic() - started - sum(r.seconds for r in runs), 0.0)
            runs.append(PhaseRun(names[len(runs)], ok=False, seconds=seconds, error=error))
        else:
            runs[-1].ok, runs[-1].error = False, error
    return runs


# --- the projection ----------------------------------------------------------------------------------------


def project(
    rehearsed_phases: Sequence[PhaseToRun], runs: list[PhaseRun], rehearsed: LegacyVolume, live: LegacyVolume
) -> Projection:
    """Each phase's rehearsal time scaled by the live volume over the backup's, as a range."""
    row_bound = {phase.name for phase in rehearsed_phases if phase.scales_with_rows}
    row_ratio = live.rows / rehearsed.rows if rehearsed.rows else 1.0
    tenant_ratio = live.tenants / rehearsed.tenants if rehearsed.tenants else 1.0
    phases: list[PhaseProjection] = []
    for run in runs:
        main = row_ratio if run.phase in row_bound else tenant_ratio
        low = run.seconds * min(row_ratio, tenant_ratio)
        high = run.seconds * max(row_ratio, tenant_ratio) * PROJECTION_MARGIN
        phases.append(
            PhaseProjection(
                phase=run.phase,
                scaled_by="rows" if run.phase in row_bound else "tenants",
                expected_seconds=round(run.seconds * main, 1),
                low_seconds=round(low, 1),
                high_seconds=round(high, 1),
            )
        )
    return Projection(
        row_ratio=round(row_ratio, 4),
        tenant_ratio=round(tenant_ratio, 4),
        phases=phases,
        total_expected_seconds=round(sum(p.expected_seconds for p in phases), 1),
        total_low_seconds=round(sum(p.low_seconds for p in phases), 1),
        total_high_seconds=round(sum(p.high_seconds for p in phases), 1),
        complete=len(runs) == len(rehearsed_phases) and all(r.ok for r in runs),
        assumptions=[
            "the real run uses the same server, --jobs and --batch-size as the rehearsal",
            (
                "phase 3 (data) grows linearly with the legacy rows, the other phases with the number of tenants "
                "(expected); the range spans both ratios"
            ),
            (
                f"the upper bound adds {round((PROJECTION_MARGIN - 1) * 100)} % for a busier server and index builds "
                "that grow faster than linearly"
            ),
            "the rehearsal's phases include process start and the verify phase's load test (a fixed time)",
            "phases that did not run in the rehearsal (after a failure) are not projected",
        ],
    )
