"""Phase 1's backup: ``pg_dump`` in directory format (parallel), verified, hashed; and its restore."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.db import connection

from migrator import catalog, db
from migrator.core.details import BackupDetails, read_details
from migrator.core.errors import MigrationError
from migrator.models import MigrationRecord, Status
from migrator.ops import dump_parts
from migrator.step_ref import StepRef
from migrator.tables import LEGACY_AUTH_TABLES, LEGACY_TENANT_TABLES
from salesflow.layout import TENANT_SCHEMA_LIKE

MANIFEST_SUFFIX = ".manifest.json"
PART_PREFIX = "part-"  # the folders of a backup dumped in parts
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
    parts: int = 1  # pg_dump archives it is made of (see migrator/ops/dump_parts.py)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BackupInfo:
        """From a record or manifest; one written before backups had parts has one."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})  # type: ignore[arg-type]


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
    completed = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=_preexec())
    _refuse_failure(what, completed.returncode, completed.stderr)
    return completed.stdout


def _preexec() -> Callable[[], None] | None:
    return _die_with_parent if sys.platform.startswith("linux") else None


def _refuse_failure(what: str, returncode: int, stderr: str) -> None:
    if returncode == 0:
        return
    advice = ""
    if "out of shared memory" in stderr:
        advice = (
            "; the server's lock table is full (other sessions hold locks too): set "
            "SALESFLOW_BACKUP_PART_TABLES to dump in smaller parts, or raise max_locks_per_transaction"
        )
    raise MigrationError(f"{what} failed (exit {returncode}): {first_error(stderr)}{advice}")


def _run_following(cmd: list[str], env: dict[str, str], what: str, on_line: Callable[[str], None]) -> None:
    """``_run`` of a tool that says what it does on stderr (``--verbose``): each line to ``on_line`` as it
    comes; stdout is not kept."""
    lines: list[str] = []
    said = f"{Path(cmd[0]).name}: "  # how the tool starts every line it writes
    with subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_preexec()
    ) as child:
        assert child.stderr is not None
        for line in child.stderr:
            on_line(line)
            if not line.startswith(said) or ": error:" in line or ": warning:" in line:
                lines.append(line)  # what went wrong, without the lines that only say what was done
    _refuse_failure(what, child.returncode, "".join(lines))


# pg_restore --verbose: an item of the table of contents restored, whether by the one process or by a
# parallel worker (--jobs: these lines come besides "launching item N" and "finished item N").
RESTORED_ITEM = re.compile(r"^pg_restore: (?:creating|executing|processing data) ")


# pg_restore's error when the restoring role may not give an object to its owner (15: "must be member of
# role", 16 and later: "must be able to SET ROLE").
OWNER_REFUSED = re.compile(r"must be member of role|must be able to SET ROLE")


def first_error(stderr: str) -> str:
    """The line that says what went wrong: a client tool's first ``error:`` line (pg_restore follows it
    with the statement that failed, over many lines), else its last line."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()] or ["no output"]
    return next((line for line in lines if "error:" in line), lines[-1])


def backup_parts(path: Path) -> list[Path]:
    """The pg_dump archives of a backup, in restore order: the folder itself when it is one dump, else
    its ``part-NNN`` folders (the first holds everything but the tenant schemas)."""
    if (path / "toc.dat").is_file():
        return [path]
    return sorted(part for part in path.glob(f"{PART_PREFIX}*") if part.is_dir())


def list_backup(pg_restore: Path, path: Path) -> Iterator[str]:
    """The backup's table of contents (``pg_restore --list`` of every part); fails if a part is unreadable.

    Yielded part by part: at 10,000 tenants the whole list is 300,000 lines (about 50 MB as strings).
    """
    for part in backup_parts(path) or [path]:
        out = _run([str(pg_restore), "--list", str(part)], dict(os.environ), "pg_restore --list")
        yield from (line for line in out.splitlines() if line and not line.startswith(";"))


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


def recorded_backup_paths(backup_step: StepRef) -> set[str]:
    """The backups the records of ``backup_step`` (phase 1's) hold."""
    if not catalog.tracking_table_exists():
        return set()
    recorded = MigrationRecord.objects.of(backup_step).values_list("details", flat=True)
    return {
        str(details["backup"]["path"])
        for details in (read_details(BackupDetails, d) for d in recorded if isinstance(d, dict))
        if isinstance(details.get("backup"), dict)
    }


def remove_unfinished_dumps(backup_dir: Path, backup_step: StepRef) -> list[str]:
    """Dump folders of this database that killed runs left: an in-progress marker, no manifest, no record.

    The caller holds the migrator lock and a dump's pg_dump dies with its runner, so none is being
    written. Folders without a marker (anything not written by an unfinished run) are never touched.
    """
    recorded = recorded_backup_paths(backup_step)
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


def create_backup(
    pg_dump: Path,
    pg_restore: Path,
    backup_dir: Path,
    jobs: int,
    server_major: int,
    max_part_tables: int | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    *,
    backup_step: StepRef,
) -> BackupInfo:
    """A new backup in ``backup_dir``; dumps killed runs left there that no ``backup_step`` record holds go."""
    plan = dump_parts.plan_dump(jobs, dump_parts.lock_budget(), dump_parts.tenant_schema_tables(), max_part_tables)
    remove_unfinished_dumps(backup_dir, backup_step)
    path = new_backup_path(backup_dir)
    write_manifest(BackupInfo(str(path), 0, "", 0, server_major, datetime.now(UTC).isoformat()), finished=False)
    args, env = connection_args()
    try:
        if plan.tenant_parts:
            dump_in_parts(pg_dump, path, plan, args, env, progress)
        else:
            _run(
                [str(pg_dump), "--format=directory", f"--jobs={plan.jobs}", "--file", str(path), *args], env, "pg_dump"
            )
    except MigrationError:
        if path.exists():
            shutil.rmtree(path)
        in_progress_marker(path).unlink(missing_ok=True)
        raise
    entries = sum(1 for _entry in list_backup(pg_restore, path))
    sha, size = tree_sha256(path)
    info = BackupInfo(str(path), size, sha, entries, server_major, datetime.now(UTC).isoformat(), plan.parts)
    write_manifest(info)
    return info


def dump_in_parts(
    pg_dump: Path,
    path: Path,
    plan: dump_parts.DumpPlan,
    args: list[str],
    env: dict[str, str],
    progress: Callable[[int, int], None],
) -> None:
    """One pg_dump per part, one after the other, all reading the snapshot a transaction exports here."""
    path.mkdir()
    with db.connect_like_django(f"{CLIENT_APP_NAME} snapshot", autocommit=False) as holder:
        holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = str(holder.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
        selections = [["--exclude-schema", dump_parts.TENANT_SCHEMA_PATTERN]] + [
            [f"--schema={dump_parts.schema_pattern(schema)}" for schema in schemas] for schemas in plan.tenant_parts
        ]
        for number, selection in enumerate(selections):
            part = path / f"{PART_PREFIX}{number:04d}"
            _run(
                [str(pg_dump), "--format=directory", f"--snapshot={snapshot}", "--file", str(part), *selection, *args],
                env,
                f"pg_dump of part {number + 1} of {len(selections)}",
            )
            progress(number + 1, len(selections))
        holder.rollback()


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


def restore_backup(
    pg_restore: Path,
    info: BackupInfo,
    jobs: int,
    database: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """pg_restore of every part, in order, into this database (or ``database`` on the same server);
    ``progress(items done, items)`` as the items of the backup's table of contents are restored.

    Every object gets back the owner it had (no ``--no-owner``): a schema, table, view or function the
    application's or a reporting role owned would otherwise belong to whoever restores, and that role
    would lose the access ownership gave it (and a view would read with the restorer's rights). Giving an
    object to a role takes a superuser or a member of that role; pg_restore refuses otherwise, and the
    error says so."""
    args, env = connection_args()
    if database is not None:
        args[args.index("-d") + 1] = database
    parts = backup_parts(Path(info.path))
    total = info.toc_entries  # counted when the backup was taken (its sha256 was checked since)
    done = 0

    def follow(line: str) -> None:
        nonlocal done
        if progress and RESTORED_ITEM.match(line):
            done += 1
            progress(min(done, total), total)

    for number, part in enumerate(parts):
        what = "pg_restore" if len(parts) == 1 else f"pg_restore of part {number + 1} of {len(parts)}"
        command = [str(pg_restore), f"--jobs={max(1, jobs)}", "--exit-on-error", "--verbose", *args, str(part)]
        try:
            _run_following(command, env, what, follow)
        except MigrationError as exc:
            if OWNER_REFUSED.search(str(exc)):
                raise MigrationError(
                    f"{exc} (the backup's objects get back their owners: restore as a superuser or as a member "
                    "of that role)"
                ) from None
            raise
    if progress:  # a few entries (the encoding, comments) are not reported item by item
        progress(total, total)


def latest_backup(backup_step: StepRef, backup_dir: Path | None = None) -> BackupInfo | None:
    """The backup of the newest completed ``backup_step`` (phase 1's): the one a restore uses.

    With ``backup_dir``, a database whose tracking table is gone or empty (a restore killed after it
    cleared the database) falls back to the newest manifest of this database in that folder.
    """
    record = MigrationRecord.objects.latest_backup(backup_step) if catalog.tracking_table_exists() else None
    details = read_details(BackupDetails, record.details if record else None)
    if "backup" in details:
        return BackupInfo.from_dict(details["backup"])
    if backup_dir is not None:
        return next(iter(manifest_backups(backup_dir)), None)
    return None


def recorded_legacy_row_writes(backup_step: StepRef) -> int | None:
    """:func:`legacy_row_writes` as the latest completed backup recorded it (None: not recorded)."""
    record = (
        MigrationRecord.objects.of(backup_step)
        .filter(status=Status.COMPLETED)
        .order_by("-completed_at", "-id")
        .only("details")
        .first()
    )
    found = read_details(BackupDetails, record.details if record else None).get("legacy_row_writes")
    return int(found) if isinstance(found, int) else None


def legacy_row_writes(legacy_auth_schema: str, archive_schema: str) -> int:
    """Rows inserted, updated and deleted in the legacy tables (wherever they are now: in place or archived)
    since the statistics were last reset, by the server's statistics (a crash resets them)."""
    return int(
        db.fetchvalue(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
            "WHERE (schemaname LIKE %s AND relname = ANY(%s)) "
            "OR (schemaname = %s AND relname = ANY(%s)) OR schemaname = %s",
            [
                TENANT_SCHEMA_LIKE,
                list(LEGACY_TENANT_TABLES),
                legacy_auth_schema,
                list(LEGACY_AUTH_TABLES),
                archive_schema,
            ],
        )
    )
