"""Phase 1's backup: ``pg_dump`` in directory format (parallel), verified, hashed; and its restore."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.db import connection

from migrator.core.errors import MigrationError
from migrator.models import MigrationRecord


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
    env = {**os.environ, "PGAPPNAME": "salesflow-migrator-backup"}
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


def _run(cmd: list[str], env: dict[str, str], what: str) -> str:
    completed = subprocess.run(cmd, capture_output=True, text=True, env=env)
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


def create_backup(pg_dump: Path, pg_restore: Path, backup_dir: Path, jobs: int, server_major: int) -> BackupInfo:
    path = new_backup_path(backup_dir)
    args, env = connection_args()
    try:
        _run([str(pg_dump), "--format=directory", f"--jobs={max(1, jobs)}", "--file", str(path), *args], env, "pg_dump")
    except MigrationError:
        if path.exists():
            for file in sorted(path.rglob("*"), reverse=True):
                file.unlink() if file.is_file() else file.rmdir()
            path.rmdir()
        raise
    entries = list_backup(pg_restore, path)
    sha, size = tree_sha256(path)
    return BackupInfo(str(path), size, sha, len(entries), server_major, datetime.now(UTC).isoformat())


def check_backup(info: BackupInfo) -> None:
    """Refuse a backup that is missing or differs from what phase 1 recorded."""
    path = Path(info.path)
    if not path.is_dir():
        raise MigrationError(f"backup {path} is missing; nothing to restore from (rerun phase 1 on the original data)")
    sha, _size = tree_sha256(path)
    if sha != info.sha256:
        raise MigrationError(
            f"backup {path} has been altered: sha256 {sha[:16]}... differs from the recorded {info.sha256[:16]}...; refusing to restore"
        )


def restore_backup(pg_restore: Path, info: BackupInfo, jobs: int) -> None:
    args, env = connection_args()
    _run([str(pg_restore), f"--jobs={max(1, jobs)}", "--exit-on-error", "--no-owner", *args, info.path], env, "pg_restore")


def latest_backup() -> BackupInfo | None:
    """The backup of the newest completed backup step: the one a restore uses."""
    record = MigrationRecord.objects.latest_backup()
    return BackupInfo.from_dict(record.details["backup"]) if record and "backup" in record.details else None
