"""Restoring the phase-1 backup whole, with the tracking history kept.

A restore replaces ``public`` too, tracking table included, so the history is saved first (to a
JSON file beside the backup and in memory) and put back after ``pg_restore``: the record of
what happened, the rollback included, survives the rollback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.core.errors import MigrationError
from migrator.models import MigrationRecord
from migrator.ops import backup, binaries
from migrator.ops.backup import BackupInfo

def save_history(directory: Path) -> tuple[list[dict[str, Any]], Path]:
    rows = list(MigrationRecord.objects.order_by("id").values())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "schema_migrations-before-restore.json"
    path.write_text(json.dumps(rows, cls=DjangoJSONEncoder, indent=1))
    return rows, path


def put_history_back(rows: list[dict[str, Any]]) -> None:
    with transaction.atomic():
        MigrationRecord.objects.all().delete()
        MigrationRecord.objects.bulk_create([MigrationRecord(**row) for row in rows], batch_size=1000)
        db.execute("SELECT setval(pg_get_serial_sequence('public.schema_migrations', 'id'), "
                   "coalesce((SELECT max(id) FROM public.schema_migrations), 0) + 1, false)")


def schemas_in_backup(pg_restore: Path, info: BackupInfo) -> list[str]:
    names = []
    for line in backup.list_backup(pg_restore, Path(info.path)):
        parts = line.split()
        # "<id>; <oid> <oid> SCHEMA - <name> <owner>"
        if len(parts) >= 6 and parts[3] == "SCHEMA" and parts[4] == "-":
            names.append(parts[5])
    return names


def clear_database(keep_public_schema: bool, schemas: list[str]) -> None:
    with transaction.atomic():
        for schema in schemas:
            if schema != "public" and catalog.schema_exists(schema):
                db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        if keep_public_schema:
            for (table,) in db.fetchall("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"):
                db.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier("public", table)))


def restore_database(info: BackupInfo, extra_schemas: list[str], jobs: int, history_dir: Path) -> dict[str, Any]:
    """Restore the backup over this database; tracking history saved before and put back after."""
    backup.check_backup(info)
    major = catalog.server_version_num() // 10000
    if info.server_major != major:
        raise MigrationError(f"the backup was made on PostgreSQL {info.server_major}, this server is {major}; "
                             "restore it on a server of the same major version")
    pg_restore = binaries.find_binary("pg_restore", major)
    history, history_file = save_history(history_dir)
    schemas = sorted(set(schemas_in_backup(pg_restore, info)) | set(extra_schemas) | set(catalog.schemas_like_tenants()))
    clear_database(keep_public_schema=True, schemas=schemas)
    try:
        backup.restore_backup(pg_restore, info, jobs)
    except MigrationError as exc:
        raise MigrationError(f"{exc}; the tracking history is saved in {history_file}") from None
    connection.close()  # drop cached state of tables that were replaced
    put_history_back(history)
    return {"schemas_replaced": schemas, "history_rows": len(history), "history_file": str(history_file)}
