"""Restoring the phase-1 backup whole: into a new database that then takes the current one's name.

The backup is never restored over the database. ``pg_restore`` fills a new database on the same
server (``<name>_restoring_<oid>``, created like the current one: encoding, locale, owner,
tablespace), the tracking history saved from the current database is written into it, and one
transaction on the maintenance database (``postgres``) then ends the current database's sessions
and renames both: the current one to ``<name>_replaced_<oid>``, the new one to ``<name>``, and gives
the new one the current one's database-level properties (comment, connection limit, grants,
``ALTER DATABASE ... SET`` and ``ALTER ROLE ... IN DATABASE ... SET``), which a dump made without
``--create`` does not hold. The replaced database is dropped once the swap is committed.

Whatever the database holds besides the legacy schemas (functions, views, types, extensions,
publications, event triggers, in ``public`` or elsewhere) is what the dump re-creates in an empty
database, so nothing of the current database can collide with it, and a failing ``pg_restore``
leaves the current database exactly as it was: the swap is the only step that changes it, and it
is one transaction.

A journal beside the backups (``restore-in-progress-<name>.json``) is written before the new
database is created and removed once the replaced one is dropped. It names both databases and the
current one's oid, so a run killed at any point is finished by rerunning ``rollback --restore``
(see :func:`recover_interrupted_restore`): if the database carrying the name is still the one the
journal recorded, the swap never happened and the half-filled copy is dropped; otherwise the swap
happened and the replaced database is dropped. Either way the rerun then restores (again).

The migrator lock lives on a session of the current database: it is let go for the swap (a
database with a session cannot be renamed) and taken again on the database that then carries the
name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.core.context import RunLock
from migrator.core.details import RestoreDetails
from migrator.core.errors import MigrationError
from migrator.django_migrations import BOOTSTRAP_APPS, migrate_schema
from migrator.models import MigrationRecord
from migrator.ops import admin_accounts, backup, binaries
from migrator.ops.backup import BackupInfo
from migrator.ops.databases import create_database_like, database_comment, database_oid, drop_database

RESTORE_APP_NAME = "salesflow-migrator-restore"
# Where the session that creates, renames and drops databases connects: never the database itself.
MAINTENANCE_DATABASES = ("postgres", "template1")
MAX_IDENTIFIER_BYTES = 63
# Sessions of the application may reconnect between their termination and the rename: tries before giving up.
SWAP_ATTEMPTS = 5
# Settings whose value is a list of quoted elements (as pg_dump's variable_is_guc_list_quote knows them).
LIST_SETTINGS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)
DATABASE_PRIVILEGES = frozenset({"CREATE", "TEMPORARY", "CONNECT"})


def restore_marker(database: str) -> str:
    """The comment on the database being filled; the swap gives it the current database's comment."""
    return f"SalesFlow migrator: restore of database {database} in progress"


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
    """The journal a restore writes before it creates the new database and removes once the replaced
    one is gone: present means a restore of this database was killed half way."""
    path = journal_path(directory)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return {"backup": None, "history_file": None, "journal": str(path)}


@dataclass(frozen=True)
class RestoreNames:
    """The database being restored (its name and oid now), the new one the backup goes into, and the
    name the current one gets when the new one takes its place."""

    database: str
    oid: int
    scratch: str
    replaced: str


def restore_names(admin: psycopg.Connection[Any], database: str) -> RestoreNames:
    row = admin.execute("SELECT oid FROM pg_database WHERE datname = %s", [database]).fetchone()
    if row is None:
        raise MigrationError(f"database {database} is not on this server; nothing to restore into")
    oid = int(row[0])

    def name(suffix: str) -> str:  # within PostgreSQL's 63 bytes, the suffix kept whole
        room = MAX_IDENTIFIER_BYTES - len(suffix.encode())
        return database.encode()[:room].decode(errors="ignore") + suffix

    return RestoreNames(database, oid, name(f"_restoring_{oid}"), name(f"_replaced_{oid}"))


def write_journal(directory: Path, info: BackupInfo, history_file: Path, names: RestoreNames) -> None:
    path = journal_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(
        json.dumps(
            {
                "database": names.database,
                "database_oid": names.oid,
                "scratch_database": names.scratch,
                "replaced_database": names.replaced,
                "backup": info.as_dict(),
                "history_file": str(history_file),
                "started_at": datetime.now(UTC).isoformat(),
            },
            indent=1,
        )
    )
    partial.replace(path)


def maintenance_connection() -> psycopg.Connection[Any]:
    """An autocommit session on the server, in a database other than the one restored."""
    error: psycopg.Error | None = None
    for name in MAINTENANCE_DATABASES:
        try:
            return db.connect_like_django(RESTORE_APP_NAME, dbname=name)
        except psycopg.OperationalError as exc:
            error = exc
    raise MigrationError(
        f"a restore needs a session in database {' or '.join(MAINTENANCE_DATABASES)} to rename databases, "
        f"and none could be opened ({' '.join(str(error).split())})"
    )


# --- the new database ------------------------------------------------------------------------------------


def create_scratch(admin: psycopg.Connection[Any], names: RestoreNames) -> None:
    """An empty database like the current one (encoding, locale, owner, tablespace), marked as a restore's."""
    comment = database_comment(admin, names.scratch)
    if comment is not None:
        if comment != restore_marker(names.database):
            raise MigrationError(
                f"database {names.scratch} already exists and is not a restore of {names.database}; "
                "rename or drop it, then rerun `migrate_phase rollback --restore`"
            )
        drop_database(admin, names.scratch)
    create_database_like(admin, names.scratch, names.oid, same_owner=True)
    admin.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(names.scratch), sql.Literal(restore_marker(names.database))
        )
    )


def check_restored(admin: psycopg.Connection[Any], pg_restore: Path, info: BackupInfo, scratch: str) -> None:
    """Every schema of the backup, and the tracking table, are in the new database (``pg_restore`` ran
    with ``--exit-on-error`` and exited 0; this catches a dump that does not hold what it should)."""
    expected = set(schemas_in_backup(pg_restore, info))
    with db.connect_like_django(RESTORE_APP_NAME, dbname=scratch) as conn:
        present = {str(r[0]) for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
        tracking = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()
    missing = sorted(expected - present)
    if missing or not (tracking and tracking[0]):
        what = f"schema {missing[0]} ({len(missing)} in all)" if missing else "table public.schema_migrations"
        raise MigrationError(f"the restored copy {scratch} lacks {what} although pg_restore succeeded")


def write_history_into(scratch: str, rows: list[dict[str, Any]], accounts: dict[str, str]) -> int:
    """The saved tracking history, and the admin site's accounts, replace the backup's in the new database,
    in one transaction; the accounts' rows written."""
    table = sql.Identifier("public", MigrationRecord._meta.db_table)
    history = json.dumps(rows, cls=DjangoJSONEncoder)
    with db.connect_like_django(RESTORE_APP_NAME, dbname=scratch) as conn, conn.transaction():
        account_rows = admin_accounts.write_accounts_into(conn, accounts)
        conn.execute(sql.SQL("DELETE FROM {}").format(table))
        # keys the restored table has no column for are left out (a history written by a newer release)
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM jsonb_populate_recordset(NULL::{}, %s::jsonb)").format(table, table),
            [history],
        )
        conn.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), coalesce((SELECT max(id) FROM {}), 0) + 1, false)"
            ).format(table),
            [f"public.{MigrationRecord._meta.db_table}"],
        )
    return account_rows


# --- the swap ----------------------------------------------------------------------------------------------


def setting_value(name: str, value: str) -> sql.Composable:
    """A stored ``name=value`` setting as ``ALTER ... SET`` takes it: list settings element by element."""
    if name not in LIST_SETTINGS:
        return sql.Literal(value)
    elements, current, quoted = [], "", False
    for char in value + ",":  # split at commas outside double quotes, as PostgreSQL's SplitGUCList does
        if char == '"':
            quoted = not quoted
            current += char
        elif char == "," and not quoted:
            element = current.strip()
            if element.startswith('"') and element.endswith('"') and len(element) >= 2:
                element = element[1:-1].replace('""', '"')
            elements.append(element)
            current = ""
        else:
            current += char
    return sql.SQL(", ").join(sql.Literal(e) for e in elements)


def copy_database_properties(admin: psycopg.Connection[Any], source_oid: int, target: str) -> None:
    """What ``pg_dump --create`` would carry and a dump without it does not: comment, connection limit,
    grants and settings of the database (``source_oid``) onto ``target``. Owner and tablespace were
    given at CREATE DATABASE. Grants are made by the restoring user (their grantor is not kept)."""
    name = sql.Identifier(target)
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database'), datconnlimit, datacl IS NOT NULL "
        "FROM pg_database WHERE oid = %s",
        [source_oid],
    ).fetchone()
    assert row is not None
    comment, limit, has_acl = row
    admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(name, sql.Literal(comment)))
    admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(name, sql.Literal(int(limit))))
    if has_acl:  # NULL means the defaults, which the new database has
        admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
        for grantee, privilege, grantable in admin.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
            "a.is_grantable FROM pg_database d, aclexplode(d.datacl) a WHERE d.oid = %s",
            [source_oid],
        ).fetchall():
            if privilege not in DATABASE_PRIVILEGES:
                continue
            admin.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),
                    name,
                    sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                    sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL(""),
                )
            )
    for role, settings in admin.execute(
        "SELECT CASE WHEN setrole = 0 THEN NULL ELSE pg_get_userbyid(setrole) END, setconfig "
        "FROM pg_db_role_setting WHERE setdatabase = %s",
        [source_oid],
    ).fetchall():
        scope = sql.SQL("ALTER DATABASE {}").format(name)
        if role is not None:
            scope = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), name)
        for setting in settings:
            key, _, value = str(setting).partition("=")
            admin.execute(
                sql.SQL("{} SET {} TO {}").format(
                    scope, sql.SQL(".").join(sql.Identifier(part) for part in key.split(".")), setting_value(key, value)
                )
            )


def swap(admin: psycopg.Connection[Any], names: RestoreNames) -> None:
    """In one transaction: end the sessions of both databases, rename the current one away and the
    new one into its name, give the new one the current one's properties."""
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with admin.transaction():
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
                    [[names.database, names.scratch]],
                )
                admin.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(names.database), sql.Identifier(names.replaced)
                    )
                )
                admin.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(names.scratch), sql.Identifier(names.database)
                    )
                )
                copy_database_properties(admin, names.oid, names.database)
            return
        except psycopg.errors.ObjectInUse as exc:  # a session came back before the rename
            if attempt == SWAP_ATTEMPTS:
                raise MigrationError(
                    f"database {names.database} could not be replaced: sessions kept connecting to it "
                    f"({' '.join(str(exc).split())}); stop the application, then rerun "
                    "`migrate_phase rollback --restore` (the database was left as it was)"
                ) from None


def swapped(admin: psycopg.Connection[Any], names: RestoreNames) -> bool:
    """The database carrying the name is no longer the one the restore started from."""
    return database_oid(admin, names.database) not in (None, names.oid)


# --- the restore and its recovery --------------------------------------------------------------------------


def restore_tool(info: BackupInfo, bin_dirs: tuple[str, ...]) -> Path:
    """``pg_restore`` able to restore ``info`` here, or a MigrationError: found before anything is dropped."""
    major = catalog.server_version_num() // 10000
    if info.server_major != major:
        raise MigrationError(
            f"the backup was made on PostgreSQL {info.server_major}, this server is {major}; "
            "restore it on a server of the same major version"
        )
    return binaries.find_binary("pg_restore", major, bin_dirs)


def schemas_in_backup(pg_restore: Path, info: BackupInfo) -> list[str]:
    names = []
    for line in backup.list_backup(pg_restore, Path(info.path)):
        parts = line.split()
        # "<id>; <oid> <oid> SCHEMA - <name> <owner>"
        if len(parts) >= 6 and parts[3] == "SCHEMA" and parts[4] == "-":
            names.append(parts[5])
    return names


def restore_database(
    info: BackupInfo,
    jobs: int,
    history_dir: Path,
    bin_dirs: tuple[str, ...] = (),
    lock: RunLock | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RestoreDetails:
    """Replace this database with the backup (see the module's docstring); tracking history kept;
    ``progress(items done, items)`` while ``pg_restore`` restores the backup's table of contents.

    Until the swap nothing of this database changes: any failure before it drops the new database
    and leaves this one as it was.
    """
    backup.check_backup(info)
    pg_restore = restore_tool(info, bin_dirs)
    history, history_file = save_history(history_dir)
    accounts = admin_accounts.read_accounts()
    with maintenance_connection() as admin:
        names = restore_names(admin, connection.settings_dict["NAME"])
        write_journal(history_dir, info, history_file, names)
        try:
            create_scratch(admin, names)
            try:
                backup.restore_backup(pg_restore, info, jobs, database=names.scratch, progress=progress)
            except MigrationError as exc:
                raise MigrationError(
                    f"{exc}; database {names.database} was left as it was (the backup went into a new database, "
                    "now dropped)"
                ) from None
            check_restored(admin, pg_restore, info, names.scratch)
            account_rows = write_history_into(names.scratch, history, accounts)
            connection.close()  # no session of this process may stay in the database renamed
            if lock is not None:
                lock.release()
            try:
                swap(admin, names)
            finally:
                if lock is not None:
                    lock.reacquire()
        except BaseException:
            if not swapped(admin, names):
                drop_database(admin, names.scratch)
                journal_path(history_dir).unlink(missing_ok=True)
            raise
        drop_database(admin, names.replaced)
    journal_path(history_dir).unlink(missing_ok=True)
    return RestoreDetails(
        database=names.database,
        replaced_database=names.replaced,
        history_rows=len(history),
        history_file=str(history_file),
        admin_account_rows=account_rows,
    )


def recover_interrupted_restore(directory: Path) -> str | None:
    """Finish what a killed restore of this database left, so ``rollback --restore`` can run again.

    Not swapped yet: this database is as it was; the half-filled new database is dropped. Swapped:
    this database is the backup with the tracking history; the replaced database is dropped.
    """
    journal = interrupted_restore(directory)
    if journal is None:
        return None
    path = journal_path(directory)
    if not journal.get("database_oid"):
        return recover_cleared_database(journal, path)
    names = RestoreNames(
        str(journal["database"]),
        int(journal["database_oid"]),
        str(journal["scratch_database"]),
        str(journal["replaced_database"]),
    )
    connection.close()
    with maintenance_connection() as admin:
        if swapped(admin, names):
            if database_oid(admin, names.replaced) == names.oid:
                drop_database(admin, names.replaced)
            what = f"it had replaced the database with the backup; the replaced database {names.replaced} is dropped"
        else:
            # "": killed between its CREATE DATABASE and its COMMENT; the journal, written before, names it
            if database_comment(admin, names.scratch) in (restore_marker(names.database), ""):
                drop_database(admin, names.scratch)
            what = f"the database was left as it was; the unfinished copy {names.scratch} is dropped"
    path.unlink(missing_ok=True)
    return f"an interrupted restore was found ({path.name}): {what}; restoring again"


def recover_cleared_database(journal: dict[str, Any], path: Path) -> str:
    """A journal of an earlier release, which restored over the database: the database may have lost its
    tracking table, so the history saved before that restore is put back first."""
    history_file = Path(journal["history_file"]) if journal.get("history_file") else None
    if history_file is None or not history_file.is_file():
        raise MigrationError(
            f"a restore of this database was interrupted and its saved tracking history is missing "
            f"({history_file}); restore the backup by hand with pg_restore, then delete {path}"
        )
    history = json.loads(history_file.read_text())
    if not catalog.tracking_table_exists():
        migrate_schema("public", BOOTSTRAP_APPS)
    put_history_back(history)
    path.unlink(missing_ok=True)
    return f"an interrupted restore was found ({path.name}): {len(history)} tracking rows put back; restoring again"


def put_history_back(rows: list[dict[str, Any]]) -> None:
    with transaction.atomic():
        MigrationRecord.objects.all().delete()
        MigrationRecord.objects.bulk_create([MigrationRecord(**row) for row in rows], batch_size=1000)
        db.execute(
            "SELECT setval(pg_get_serial_sequence('public.schema_migrations', 'id'), "
            "coalesce((SELECT max(id) FROM public.schema_migrations), 0) + 1, false)"
        )
