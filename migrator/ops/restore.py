"""Restoring the phase-1 backup whole, with the tracking history kept.

A restore replaces ``public`` too, tracking table included, so the history is saved first (to a
JSON file beside the backup and in memory) and put back after ``pg_restore``: the record of
what happened, the rollback included, survives the rollback.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.core.errors import MigrationError
from migrator.django_migrations import BOOTSTRAP_APPS, migrate_schema
from migrator.models import MigrationRecord
from migrator.ops import backup, binaries
from migrator.ops.backup import BackupInfo


def save_history(directory: Path) -> tuple[list[dict[str, Any]], Path]:
    rows: list[dict[str, Any]] = [dict(row) for row in MigrationRecord.objects.order_by("id").values()]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "schema_migrations-before-restore.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(rows, cls=DjangoJSONEncoder, indent=1))
    partial.replace(path)  # a kill while writing never leaves half a history
    return rows, path


def journal_path(directory: Path) -> Path:
    return directory / f"restore-in-progress-{connection.settings_dict['NAME']}.json"


def interrupted_restore(directory: Path) -> dict[str, Any] | None:
    """The journal a restore writes before it clears the database and removes once the history is back:
    present means a restore of this database was killed half way."""
    path = journal_path(directory)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return {"backup": None, "history_file": None, "journal": str(path)}


def write_journal(directory: Path, info: BackupInfo, history_file: Path) -> None:
    path = journal_path(directory)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(
        json.dumps(
            {
                "database": connection.settings_dict["NAME"],
                "backup": info.as_dict(),
                "history_file": str(history_file),
                "started_at": datetime.now(UTC).isoformat(),
            },
            indent=1,
        )
    )
    partial.replace(path)


def stop_orphaned_client_tools() -> int:
    """End sessions of a pg_dump/pg_restore that outlived a killed runner (run without PDEATHSIG)."""
    return len(
        db.fetchall(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND pid <> pg_backend_pid()",
            [backup.CLIENT_APP_NAME],
        )
    )


def recover_interrupted_restore(directory: Path, extra_schemas: list[str], bin_dirs: tuple[str, ...]) -> str | None:
    """Bring a database a killed restore left half-restored back to "history only", so the restore can rerun.

    The database is cleared as the restore does it, the tracking tables rebuilt and the history saved
    before the killed restore put back: the rerun then finds its backup and records a new attempt.
    """
    journal = interrupted_restore(directory)
    if journal is None:
        return None
    history_file = Path(journal["history_file"]) if journal.get("history_file") else None
    if history_file is None or not history_file.is_file():
        raise MigrationError(
            f"a restore of this database was interrupted and its saved tracking history is missing "
            f"({history_file}); restore the backup by hand with pg_restore, then delete "
            f"{journal_path(directory)}"
        )
    history = json.loads(history_file.read_text())
    stop_orphaned_client_tools()
    schemas = set(extra_schemas) | set(catalog.schemas_like_tenants())
    if journal.get("backup"):
        info = BackupInfo.from_dict(journal["backup"])
        if Path(info.path).is_dir():
            pg_restore = binaries.find_binary("pg_restore", catalog.server_version_num() // 10000, bin_dirs)
            schemas |= set(schemas_in_backup(pg_restore, info))
    clear_database(keep_public_schema=True, schemas=sorted(schemas))
    connection.close()
    migrate_schema("public", BOOTSTRAP_APPS)
    put_history_back(history)
    return (
        f"an interrupted restore was found ({journal_path(directory).name}): database cleared, "
        f"{len(history)} tracking rows put back; restoring again"
    )


def put_history_back(rows: list[dict[str, Any]]) -> None:
    with transaction.atomic():
        MigrationRecord.objects.all().delete()
        MigrationRecord.objects.bulk_create([MigrationRecord(**row) for row in rows], batch_size=1000)
        db.execute(
            "SELECT setval(pg_get_serial_sequence('public.schema_migrations', 'id'), "
            "coalesce((SELECT max(id) FROM public.schema_migrations), 0) + 1, false)"
        )


def schemas_in_backup(pg_restore: Path, info: BackupInfo) -> list[str]:
    names = []
    for line in backup.list_backup(pg_restore, Path(info.path)):
        parts = line.split()
        # "<id>; <oid> <oid> SCHEMA - <name> <owner>"
        if len(parts) >= 6 and parts[3] == "SCHEMA" and parts[4] == "-":
            names.append(parts[5])
    return names


# Schemas dropped per transaction: each drop locks every object of its schema until the commit, and
# thousands of tenant schemas in one transaction would not fit the server's lock table.
SCHEMAS_PER_TRANSACTION = 50


def clear_database(keep_public_schema: bool, schemas: list[str]) -> None:
    """Drop ``schemas`` and public's tables. Not one transaction: a restore killed half way is finished
    by rerunning it (its journal says so), which clears the database again first."""
    dropped = [schema for schema in schemas if schema != "public"]
    for start in range(0, len(dropped), SCHEMAS_PER_TRANSACTION):
        with transaction.atomic():
            for schema in dropped[start : start + SCHEMAS_PER_TRANSACTION]:
                db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    with transaction.atomic():
        if keep_public_schema:
            for (table,) in db.fetchall(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
            ):
                db.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier("public", table)))


def restore_tool(info: BackupInfo, bin_dirs: tuple[str, ...]) -> Path:
    """``pg_restore`` able to restore ``info`` here, or a MigrationError: found before anything is dropped."""
    major = catalog.server_version_num() // 10000
    if info.server_major != major:
        raise MigrationError(
            f"the backup was made on PostgreSQL {info.server_major}, this server is {major}; "
            "restore it on a server of the same major version"
        )
    return binaries.find_binary("pg_restore", major, bin_dirs)


def restore_database(
    info: BackupInfo, extra_schemas: list[str], jobs: int, history_dir: Path, bin_dirs: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Restore the backup over this database; tracking history saved before and put back after.

    A journal beside the history says a restore is under way until the history is back, so a run
    killed in between is finished by rerunning ``rollback --restore`` (see recover_interrupted_restore).
    """
    backup.check_backup(info)
    pg_restore = restore_tool(info, bin_dirs)
    history, history_file = save_history(history_dir)
    write_journal(history_dir, info, history_file)
    schemas = sorted(
        set(schemas_in_backup(pg_restore, info)) | set(extra_schemas) | set(catalog.schemas_like_tenants())
    )
    clear_database(keep_public_schema=True, schemas=schemas)
    try:
        backup.restore_backup(pg_restore, info, jobs)
    except MigrationError as exc:
        raise MigrationError(f"{exc}; the tracking history is saved in {history_file}") from None
    connection.close()  # drop cached state of tables that were replaced
    put_history_back(history)
    journal_path(history_dir).unlink(missing_ok=True)
    return {"schemas_replaced": schemas, "history_rows": len(history), "history_file": str(history_file)}
