"""Phase 1: preflight errors, hostile schema names, and a backup that really restores."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError
from django.db import connection
from psycopg import sql

from migrator import catalog, db
from migrator.core.errors import MigrationError
from migrator.models import Status
from migrator.ops import backup, binaries
from migrator.ops.backup import latest_backup
from migrator.phases.prepare import PreparePhase
from migrator.tables import LEGACY_AUTH_TABLES, LEGACY_TENANT_TABLES
from tenants.models import Tenant
from tests.helpers import run
from tests.migrator.helpers import fingerprint, latest, one_line, psycopg_connect, records, rows, table_names

HOSTILE = [
    "tenant_Bad-Name",
    'tenant_x"; drop table y; --',
    "tenant_",
    "tenant_UPPER",
    "tenant_a b",
    "tenant_1abc",
    "tenant_café",
    "tenant_x'y",
]


def server_major() -> int:
    return catalog.server_version_num() // 10000


def assert_preflight_failed(exc: pytest.ExceptionInfo[CommandError], reason: str) -> None:
    message = str(exc.value)
    assert one_line(message)
    assert exc.value.returncode == 1
    assert message.startswith("phase prepare failed: 1 step(s) failed, first [all] preflight: ")
    row = latest("prepare/*/preflight")
    assert (row.status, row.attempt) == (Status.FAILED, 1)
    assert reason in row.error_message
    assert reason in message
    assert not records(phase="prepare", status=Status.COMPLETED)  # nothing after the preflight ran
    assert not Tenant.objects.exists()


@pytest.fixture
def no_client_tools(settings, tmp_path, monkeypatch):
    """A machine with no pg_dump anywhere: empty BIN_DIRS and PATH, well-known folders not searched."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    settings.SALESFLOW = {**settings.SALESFLOW, "BIN_DIRS": [str(empty)], "BIN_SEARCH_WELL_KNOWN": False}
    monkeypatch.setenv("PATH", str(empty))
    return empty


def test_missing_pg_dump_fails_the_preflight_with_one_line(seeded, no_client_tools):
    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "prepare", interactive=False)

    major = server_major()
    assert_preflight_failed(
        exc,
        f"pg_dump for PostgreSQL {major} not found; install the PostgreSQL {major} client "
        "tools or list their folder in SALESFLOW_PG_BIN_DIRS",
    )


def test_pg_dump_of_another_major_version_is_not_used(seeded, no_client_tools):
    fake = no_client_tools / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    fake.chmod(0o755)

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "prepare", interactive=False)

    assert_preflight_failed(exc, f"pg_dump for PostgreSQL {server_major()} not found (found: {fake} is 9)")


@pytest.mark.django_db  # reads the server's version; writes nothing
def test_the_real_binaries_are_found_for_the_servers_major_version():
    major = server_major()
    for name in ("pg_dump", "pg_restore"):
        path = binaries.find_binary(name, major)
        assert binaries.binary_major(path) == major
    with pytest.raises(MigrationError, match="pg_dump for PostgreSQL 3 not found"):
        binaries.find_binary("pg_dump", 3)


def test_a_binary_replaced_since_it_was_asked_is_asked_again(tmp_path):
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.11'\n")
    fake.chmod(0o755)
    assert binaries.binary_major(fake) == 14
    assert binaries.binary_major(fake) == 14  # the answer kept (the file is the same)

    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)'\n")
    assert binaries.binary_major(fake) == 15
    fake.unlink()
    assert binaries.binary_major(fake) is None


@pytest.mark.parametrize("kind", ["under a regular file", "a regular file"])
def test_unwritable_backup_folder_fails_the_preflight(seeded, settings, tmp_path, kind):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file, not a folder")
    folder = blocker / "backups" if kind == "under a regular file" else blocker
    settings.SALESFLOW = {**settings.SALESFLOW, "BACKUP_DIR": folder}

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "prepare", interactive=False)

    reason = "Not a directory" if kind == "under a regular file" else "File exists"
    assert_preflight_failed(exc, f"backup folder {folder} cannot be created: {reason}; set SALESFLOW_BACKUP_DIR")


def test_hostile_schema_names_are_reported_and_skipped(seeded):
    for name in HOSTILE:
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        db.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, first_name text)").format(sql.Identifier(name, "contacts"))
        )
    db.execute("CREATE TABLE public.y (id int)")  # what the injection would drop

    out = run("migrate_phase", "prepare", interactive=False)

    assert "Phase prepare: 8 steps OK, 0 failed" in out
    discover = latest("prepare/*/discover")
    assert discover.status == Status.COMPLETED
    assert sorted(discover.details["invalid_schemas"]) == sorted(HOSTILE)
    assert sorted(discover.details["tenants"]) == ["acme_0001", "empty_0001", "globex_0002"]
    assert f"skipped {len(HOSTILE)} schemas whose names are not valid tenant ids" in discover.details["message"]
    assert repr('tenant_x"; drop table y; --') in discover.details["message"]
    assert sorted(Tenant.objects.values_list("schema_name", flat=True)) == [
        "tenant_acme_0001",
        "tenant_empty_0001",
        "tenant_globex_0002",
    ]
    assert table_names("public") >= {"y"}

    run("migrate_phase", "schemas", interactive=False)  # later phases never touch them either
    for name in HOSTILE:
        assert table_names(name) == {"contacts"}
        assert catalog.row_count(name, "contacts") == 0


@pytest.mark.parametrize("tenant_id", ["Bad-Name", 'x"; drop table y; --', "tenant_Bad"])
def test_a_hostile_tenant_option_is_refused_before_anything_runs(seeded, tenant_id):
    with pytest.raises(CommandError, match=r"^invalid tenant id .*: tenant ids match") as exc:
        run("migrate_phase", "prepare", interactive=False, tenant=[tenant_id])
    assert one_line(str(exc.value))
    assert not records()


def test_backup_is_recorded_and_restores_into_a_scratch_database(prepared_with_backup, settings):
    row = latest("prepare/*/backup")
    info = latest_backup(PreparePhase.BACKUP)
    assert info is not None
    assert row.details["backup"] == info.as_dict()
    path = Path(info.path)
    assert path.is_dir()
    assert path.parent == Path(settings.SALESFLOW["BACKUP_DIR"])
    assert row.details["message"].startswith(f"{path} (")
    sha, size = backup.tree_sha256(path)
    assert (info.sha256, info.size) == (sha, size)
    assert size == sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert info.toc_entries > 0
    assert info.server_major == server_major()

    legacy_tables = rows(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND (n.nspname = 'salesflow_auth' OR starts_with(n.nspname, 'tenant_')) ORDER BY 1, 2"
    )
    assert len(legacy_tables) == len(LEGACY_AUTH_TABLES) + 3 * len(LEGACY_TENANT_TABLES)
    scratch = f"{connection.settings_dict['NAME']}_restore_{os.getpid()}"
    with psycopg_connect("postgres") as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(scratch)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        pg_restore = binaries.find_binary("pg_restore", server_major())
        args, env = backup.connection_args()
        args[args.index("-d") + 1] = scratch
        subprocess.run(
            [str(pg_restore), "--no-owner", "--exit-on-error", *args, str(path)],
            env=env,
            check=True,
            capture_output=True,
        )
        with psycopg_connect(scratch) as restored:
            for schema, table in legacy_tables:
                assert fingerprint(schema, table, restored) == fingerprint(schema, table), f"{schema}.{table}"
    finally:
        with psycopg_connect("postgres") as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))


def test_an_altered_backup_is_refused(prepared_with_backup):
    info = latest_backup(PreparePhase.BACKUP)
    assert info is not None
    victim = next(p for p in sorted(Path(info.path).iterdir()) if p.name.endswith(".dat.gz"))
    victim.write_bytes(victim.read_bytes() + b"\0")

    with pytest.raises(MigrationError, match=r"has been altered: sha256 .* differs from the recorded"):
        backup.check_backup(info)


def test_a_backup_never_overwrites_or_removes_an_earlier_one(clean_db, tmp_path):
    """Backups are named by the second: one taken in the same second as another must not touch it."""
    run("seed_legacy", tenants=1, contacts=5, activities=5, seed=1)
    name = connection.settings_dict["NAME"]
    now = datetime.now(UTC)
    earlier = []
    for offset in range(10):  # whatever second the backup starts in, a folder of that name is there already
        stamp = (now + timedelta(seconds=offset)).strftime("%Y%m%dT%H%M%SZ")
        folder = tmp_path / f"salesflow-{name}-{stamp}.dump"
        folder.mkdir()
        (folder / "toc.dat").write_text("an earlier backup")
        earlier.append(folder)
    major = server_major()

    info = backup.create_backup(
        binaries.find_binary("pg_dump", major),
        binaries.find_binary("pg_restore", major),
        tmp_path,
        1,
        major,
        backup_step=PreparePhase.BACKUP,
    )

    assert all((folder / "toc.dat").read_text() == "an earlier backup" for folder in earlier)
    assert Path(info.path) not in earlier
    assert list(backup.list_backup(binaries.find_binary("pg_restore", major), Path(info.path)))
