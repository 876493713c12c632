"""Phase 1's backup: ``pg_dump`` in directory format (parallel), verified, hashed; and its restore."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.db import connection

from migrator import catalog, db
from migrator.core.errors import MigrationError
from migrator.models import BACKUP_PHASE, BACKUP_STEP, MigrationRecord

MANIFEST_SUFFIX = ".manifest.json"
CLIENT_APP_NAME = "salesflow-migrator-backup"  # application_name of pg_dump / pg_restore sessions
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class BackupInfo:
    path: str
    size: int
    sha256: str
    toc_entries: int
    server_major: int
    created_at: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BackupInfo:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


def connection_args() -> tuple[list[str], dict[str, str]]:
    """``-h/-p/-U/-d`` arguments and environment for a libpq client tool, from Django's settings."""
    conf = connection.settings_dict
    args = ["-d", conf["NAME"]]
    if conf["HOST"]:
        args += ["-h", conf["HOST"]]
    if conf["PORT"]:
        args += ["-p", str(conf["PORT"])]
    if conf["USER"]:
        args += ["-U", conf["USER"]]
    env = {**os.environ, "PGAPPNAME": CLIENT_APP_NAME}
    if conf["PASSWORD"]:
        env["PGPASSWORD"] = conf["PASSWORD"]
    return args, env


def tree_sha256(path: Path) -> tuple[str, int]:
    """sha256 over every file of a dump directory (names and contents, in name order) and its total size."""
    digest = hashlib.sha256()
    size = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the runner dies, so a killed runner leaves no
    pg_dump writing an unrecorded dump or pg_restore rewriting the database behind the next run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the runner died before prctl took effect
        os._exit(1)


def _run(cmd: list[str], env: dict[str, str], what: str) -> str:
    # PDEATHSIG fires when the thread that started the child ends; steps that call this run on the
    # runner's main thread, which lives as long as the process.
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    completed = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=preexec)
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise MigrationError(f"{what} failed (exit {completed.returncode}): {last}")
    return completed.stdout


def list_backup(pg_restore: Path, path: Path) -> list[str]:
    """The dump's table of contents (``pg_restore --list``); fails if the dump is unreadable."""
    out = _run([str(pg_restore), "--list", str(path)], dict(os.environ), "pg_restore --list")
    return [line for line in out.splitlines() if line and not line.startswith(";")]


def new_backup_path(backup_dir: Path) -> Path:
    """A dump folder name not taken yet: a backup never writes into (or cleans up) an earlier one."""
    stem = f"salesflow-{connection.settings_dict['NAME']}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    path, number = backup_dir / f"{stem}.dump", 1
    while path.exists():
        path, number = backup_dir / f"{stem}-{number}.dump", number + 1
    return path


def manifest_path(dump: Path) -> Path:
    """The manifest sits beside the dump (not in it: the dump's sha256 covers its folder)."""
    return dump.with_name(dump.name + MANIFEST_SUFFIX)


def in_progress_marker(dump: Path) -> Path:
    """Written before pg_dump starts; the finished manifest replaces it. Left alone, it marks the dump
    of a run that was killed (or failed) before it finished."""
    manifest = manifest_path(dump)
    return manifest.with_name(manifest.name + ".partial")


def write_manifest(info: BackupInfo, finished: bool = True) -> Path:
    """Location and checksum of a finished backup, kept outside the database a restore replaces."""
    path = manifest_path(Path(info.path))
    partial = in_progress_marker(Path(info.path))
    partial.write_text(
        json.dumps({**info.as_dict(), "database": connection.settings_dict["NAME"], "finished": finished}, indent=1)
    )
    if finished:
        partial.replace(path)  # a manifest is whole or absent
    return path


def dump_prefix() -> str:
    return f"salesflow-{connection.settings_dict['NAME']}-"


def manifest_backups(backup_dir: Path) -> list[BackupInfo]:
    """Finished backups of this database found by their manifests, newest first."""
    found: list[BackupInfo] = []
    if not backup_dir.is_dir():
        return found
    for path in backup_dir.glob(f"{dump_prefix()}*.dump{MANIFEST_SUFFIX}"):
        try:
            data = json.loads(path.read_text())
            if data.get("database") == connection.settings_dict["NAME"]:
                found.append(BackupInfo.from_dict(data))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable manifest: not a backup we can vouch for
    return sorted(found, key=lambda info: info.created_at, reverse=True)


def recorded_backup_paths() -> set[str]:
    if not catalog_has_tracking():
        return set()
    return {
        str(details["backup"]["path"])
        for details in MigrationRecord.objects.filter(phase=BACKUP_PHASE, step=BACKUP_STEP).values_list(
            "details", flat=True
        )
        if isinstance(details, dict) and isinstance(details.get("backup"), dict)
    }


def remove_unfinished_dumps(backup_dir: Path) -> list[str]:
    """Dump folders of this database that killed runs left: an in-progress marker, no manifest, no record.

    The caller holds the migrator lock and a dump's pg_dump dies with its runner, so none is being
    written. Folders without a marker (anything not written by an unfinished run) are never touched.
    """
    recorded = recorded_backup_paths()
    removed = []
    for marker in sorted(backup_dir.glob(f"{dump_prefix()}*.dump{MANIFEST_SUFFIX}.partial")):
        dump = marker.with_name(marker.name.removesuffix(MANIFEST_SUFFIX + ".partial"))
        if manifest_path(dump).exists() or str(dump) in recorded:
            continue
        if dump.is_dir():
            shutil.rmtree(dump)
            removed.append(str(dump))
        marker.unlink(missing_ok=True)
    return removed


def catalog_has_tracking() -> bool:
    return catalog.table_exists("public", "schema_migrations")


@dataclass(frozen=True)
class LockBudget:
    """pg_dump takes ACCESS SHARE on every table in its first transaction and holds it to the end; with
    ``--jobs`` each worker locks every table it dumps again, in its own transaction. All of them share
    the server's ``max_locks_per_transaction x (max_connections + max_prepared_transactions)`` slots."""

    tables: int
    locks_per_transaction: int
    connections: int

    @property
    def slots(self) -> int:
        return self.locks_per_transaction * self.connections


def lock_budget() -> LockBudget:
    row = db.fetchone(
        "SELECT (SELECT count(*) FROM pg_class c WHERE c.relkind IN ('r', 'p', 'm', 'f') "
        "AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)), "
        "current_setting('max_locks_per_transaction')::int, "
        "current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int"
    )
    return LockBudget(*(int(v) for v in row or (0, 0, 0)))


# Share of the lock table a dump may take: the server's other sessions need slots too.
DUMP_LOCK_SHARE = 0.8


def dump_jobs(requested: int, budget: LockBudget) -> int:
    """pg_dump's ``--jobs``: ``requested`` while the leader's and the workers' locks fit, else 1 (the
    leader's locks only; a thousand tenants outgrow a default server's lock table in parallel); a dump
    whose leader alone cannot lock every table is refused before it starts."""
    allowed = int(budget.slots * DUMP_LOCK_SHARE)
    if budget.tables > allowed:
        needed = int(budget.tables / DUMP_LOCK_SHARE / max(1, budget.connections)) + 1
        raise MigrationError(
            f"pg_dump must lock all {budget.tables} tables at once, more than the server's lock table leaves room "
            f"for ({budget.slots} slots): set max_locks_per_transaction to at least {needed} (now "
            f"{budget.locks_per_transaction}), restart PostgreSQL, then rerun the phase"
        )
    if requested > 1 and 2 * budget.tables > allowed:
        return 1
    return max(1, requested)


def create_backup(pg_dump: Path, pg_restore: Path, backup_dir: Path, jobs: int, server_major: int) -> BackupInfo:
    jobs = dump_jobs(jobs, lock_budget())
    remove_unfinished_dumps(backup_dir)
    path = new_backup_path(backup_dir)
    write_manifest(BackupInfo(str(path), 0, "", 0, server_major, datetime.now(UTC).isoformat()), finished=False)
    args, env = connection_args()
    try:
        _run([str(pg_dump), "--format=directory", f"--jobs={max(1, jobs)}", "--file", str(path), *args], env, "pg_dump")
    except MigrationError:
        if path.exists():
            for file in sorted(path.rglob("*"), reverse=True):
                file.unlink() if file.is_file() else file.rmdir()
            path.rmdir()
        in_progress_marker(path).unlink(missing_ok=True)
        raise
    entries = list_backup(pg_restore, path)
    sha, size = tree_sha256(path)
    info = BackupInfo(str(path), size, sha, len(entries), server_major, datetime.now(UTC).isoformat())
    write_manifest(info)
    return info


def check_backup(info: BackupInfo) -> None:
    """Refuse a backup that is missing or differs from what phase 1 recorded."""
    path = Path(info.path)
    if not path.is_dir():
        raise MigrationError(f"backup {path} is missing; nothing to restore from (rerun phase 1 on the original data)")
    sha, _size = tree_sha256(path)
    if sha != info.sha256:
        raise MigrationError(
            f"backup {path} has been altered: sha256 {sha[:16]}... differs from the recorded {info.sha256[:16]}...; "
            "refusing to restore"
        )


def restore_backup(pg_restore: Path, info: BackupInfo, jobs: int) -> None:
    args, env = connection_args()
    _run(
        [str(pg_restore), f"--jobs={max(1, jobs)}", "--exit-on-error", "--no-owner", *args, info.path],
        env,
        "pg_restore",
    )


def latest_backup(backup_dir: Path | None = None) -> BackupInfo | None:
    """The backup of the newest completed backup step: the one a restore uses.

    With ``backup_dir``, a database whose tracking table is gone or empty (a restore killed after it
    cleared the database) falls back to the newest manifest of this database in that folder.
    """
    record = MigrationRecord.objects.latest_backup() if catalog_has_tracking() else None
    if record and "backup" in record.details:
        return BackupInfo.from_dict(record.details["backup"])
    if backup_dir is not None:
        return next(iter(manifest_backups(backup_dir)), None)
    return None
