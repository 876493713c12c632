"""Backup and restore reliability: killed restores resume, client tools die with the runner, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management.base import CommandError
from django.db import DatabaseError, connection
from psycopg import sql

from migrator import catalog, db
from migrator.config import get_config
from migrator.core.context import MigrationContext
from migrator.engine import orchestration
from migrator.models import MigrationRecord, Status
from migrator.ops import backup, binaries, grants, restore
from migrator.phases.prepare import PreparePhase, server_major
from salesflow.database import DatabaseUrlError, parse_database_url
from tests import warm_children
from tests.helpers import legacy_fingerprints, run
from tests.migrator.helpers import (
    PROJECT_DIR,
    database_url,
    manage,
    manage_command,
    manage_env,
    manage_here,
    one_line,
    psycopg_connect,
    start_manage,
    wait_for,
)

TENANTS = ["acme_0001", "globex_0002", "empty_0001"]
CLIENT_APP_NAME = "salesflow-migrator-backup"  # application_name of the migrator's pg_dump / pg_restore


def runner_env(**extra: str) -> dict[str, str]:
    """A child ``manage.py`` that shares this test's backup folder and role prefix."""
    conf = django_settings.SALESFLOW
    return manage_env(SALESFLOW_BACKUP_DIR=str(conf["BACKUP_DIR"]), SALESFLOW_ROLE_PREFIX=conf["ROLE_PREFIX"], **extra)


def children(pid: int) -> list[tuple[int, str]]:
    """Live child processes of ``pid`` (pid, command name), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(rest[1]) == pid and rest[0] != "Z":
            found.append((int(entry.name), name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def client_tool_sessions(watcher: Any) -> list[tuple[int, str]]:
    """pg_dump's sessions in this database, pg_restore's in the new database a restore fills."""
    return watcher.execute(
        "SELECT pid, coalesce(wait_event_type, '') FROM pg_stat_activity "
        "WHERE (datname = current_database() OR starts_with(datname, current_database() || '_restoring_')) "
        "AND application_name = %s",
        [CLIENT_APP_NAME],
    ).fetchall()


def legacy_intact(before: dict[str, tuple[int, str]]) -> bool:
    try:
        return legacy_fingerprints(TENANTS) == before
    except DatabaseError:  # a table is missing
        return False
    finally:
        connection.close()


def kill_hard(child: subprocess.Popen[bytes]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL


# --- item 3: a killed restore ------------------------------------------------------------------------------


def test_a_restore_killed_during_pg_restore_is_finished_by_rerunning_it(larger_schemas_ready):
    before = legacy_fingerprints(TENANTS)  # phases 1 and 2 leave the legacy tables as they were
    history_ids = set(MigrationRecord.objects.values_list("id", flat=True))
    connection.close()

    with psycopg_connect() as watcher:
        child = warm_children.popen(
            manage_command("migrate_phase", "rollback", "--restore", "--noinput"),
            cwd=PROJECT_DIR,
            env=runner_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:

            def restoring() -> bool:
                if child.poll() is not None:
                    raise AssertionError(f"the restore ended before it could be killed: {child.stderr.read()!r}")
                return bool(client_tool_sessions(watcher))

            wait_for(restoring, timeout=60, interval=0.001, what="pg_restore to start")
            kill_hard(child)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        wait_for(lambda: not client_tool_sessions(watcher), timeout=20, what="pg_restore to die with its runner")

    # the kill left the database as it was (the backup was going into a new database), history included
    assert legacy_intact(before)
    assert catalog.table_exists("tenant_acme_0001", "contact_data_contacts")
    assert history_ids <= set(MigrationRecord.objects.values_list("id", flat=True))
    connection.close()

    rerun = manage("migrate_phase", "rollback", "--restore", "--noinput", env=runner_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "interrupted restore" in rerun.stdout
    connection.close()
    assert legacy_fingerprints(TENANTS) == before
    assert not catalog.table_exists("tenant_acme_0001", "contact_data_contacts")
    assert history_ids < set(MigrationRecord.objects.values_list("id", flat=True))  # history kept
    restores = list(MigrationRecord.objects.filter(phase="rollback", step="restore_backup").order_by("attempt"))
    assert [r.status for r in restores] == [Status.FAILED, Status.COMPLETED]
    assert restores[0].error_message.startswith("interrupted:")
    assert restore.interrupted_restore(get_config().backup_dir) is None


def test_restore_finds_the_backup_through_its_manifest_when_the_tracking_history_is_lost(prepared_with_backup):
    before = legacy_fingerprints(TENANTS)
    info = backup.latest_backup(PreparePhase.BACKUP)
    assert info is not None
    assert backup.manifest_path(Path(info.path)).is_file()
    run("migrate_phase", "schemas", interactive=False)  # something for the restore to undo
    db.execute("TRUNCATE public.schema_migrations")
    run("migrate_phase", "rollback", interactive=False, restore=True)
    assert legacy_fingerprints(TENANTS) == before
    assert MigrationRecord.objects.get(phase="rollback", step="check_backup").details["backup"]["path"] == info.path


def test_prepare_refuses_to_back_up_a_database_without_legacy_tenants_when_a_backup_exists(prepared_with_backup):
    for tenant in TENANTS:
        db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(f"tenant_{tenant}")))
    MigrationRecord.objects.filter(phase="prepare").update(status=Status.ROLLED_BACK)
    dumps = set(get_config().backup_dir.iterdir())
    with pytest.raises(CommandError, match=r"holds no legacy tenant schema but backup .* exists") as caught:
        run("migrate_phase", "prepare", interactive=False)
    assert one_line(str(caught.value))
    assert set(get_config().backup_dir.iterdir()) == dumps


def test_an_interrupted_restore_blocks_other_phases_until_it_is_finished(prepared):
    info = backup.latest_backup(PreparePhase.BACKUP)
    assert info is not None
    _rows, history = restore.save_history(get_config().backup_dir)
    with restore.maintenance_connection() as admin:
        names = restore.restore_names(admin, connection.settings_dict["NAME"])
    restore.write_journal(get_config().backup_dir, info, history, names)
    with pytest.raises(CommandError, match="rerun `migrate_phase rollback --restore`"):
        run("migrate_phase", "all", interactive=False)
    run("migrate_phase", "rollback", interactive=False, restore=True)
    assert restore.interrupted_restore(get_config().backup_dir) is None


# --- items 3 and 12: client tools die with the runner; unrecorded dumps are cleaned up ----------------------


def test_pg_dump_dies_with_a_killed_runner_and_its_dump_folder_is_removed_by_the_next_backup(seeded):
    run("migrate_phase", "prepare", interactive=False)
    MigrationRecord.objects.filter(phase="prepare", step="backup").update(status=Status.ROLLED_BACK)
    backup_dir = get_config().backup_dir
    recorded = set(backup_dir.iterdir())
    connection.close()
    with psycopg_connect() as blocker, psycopg_connect() as watcher:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE tenant_acme_0001.contacts IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here
        child = warm_children.popen(
            manage_command("migrate_phase", "prepare", "--noinput"),
            cwd=PROJECT_DIR,
            env=runner_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        tools: list[tuple[int, str]] = []
        try:
            wait_for(
                lambda: any(w == "Lock" for _pid, w in client_tool_sessions(watcher)),
                timeout=60,
                what="pg_dump to wait for the locked table",
            )
            tools = [c for c in children(child.pid) if c[1] == "pg_dump"]
            assert tools, children(child.pid)
            kill_hard(child)
            wait_for(
                lambda: not any(alive(pid) for pid, _name in tools), timeout=10, what="pg_dump to die with its runner"
            )
        finally:
            for pid, _name in tools:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            if child.poll() is None:
                child.kill()
                child.wait()
            blocker.execute("ROLLBACK")
    left = set(backup_dir.iterdir()) - recorded
    assert [p for p in left if p.name.endswith(".dump")], left  # the killed run's unfinished dump
    run("migrate_phase", "prepare", interactive=False)
    new = set(backup_dir.iterdir()) - recorded
    info = backup.latest_backup(PreparePhase.BACKUP)
    assert info is not None
    assert new == {Path(info.path), backup.manifest_path(Path(info.path))}  # the unfinished dump is gone


# --- item 12: restore and SALESFLOW_PG_BIN_DIRS; bounds and empty settings -----------------------------------


def test_restore_uses_pg_bin_dirs_and_finds_pg_restore_before_dropping_roles(prepared, settings, monkeypatch, tmp_path):
    real_dir = binaries.find_binary("pg_restore", server_major()).parent
    role = get_config().service_role("auth")
    grants.create_role(role)  # as phase 4 makes it: a role of the migrator, which a restore drops
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    settings.SALESFLOW = {**settings.SALESFLOW, "BIN_DIRS": [str(empty)], "BIN_SEARCH_WELL_KNOWN": False}
    with pytest.raises(CommandError, match=r"pg_restore for PostgreSQL .* not found"):
        run("migrate_phase", "rollback", interactive=False, restore=True)
    assert catalog.role_exists(role)  # nothing was changed before the tool was found
    assert MigrationRecord.objects.get(phase="rollback", step="check_backup").status == Status.FAILED

    settings.SALESFLOW = {**settings.SALESFLOW, "BIN_DIRS": [str(real_dir)]}
    run("migrate_phase", "rollback", interactive=False, restore=True)
    restored = MigrationRecord.objects.filter(phase="rollback", step="restore_backup").latest("attempt")
    assert restored.status == Status.COMPLETED
    assert not catalog.role_exists(role)


def test_batch_size_is_bounded():  # no django_db mark: refused before any query
    result = manage_here("migrate_phase", "data", "--batch-size", "99999999999999999999", "--noinput")
    assert result.returncode == 2
    assert "expected at most 1000000" in result.stderr


def test_an_empty_backup_dir_setting_means_the_default_folder(clean_db, tmp_path):
    result = manage(
        "migrate_phase", "prepare", "--plan", env=manage_env(SALESFLOW_BACKUP_DIR="", SALESFLOW_DATA_DIR=str(tmp_path))
    )
    assert result.returncode == 0, result.stderr
    assert f"into {tmp_path / 'backups'}" in result.stdout


# --- item 10: one line instead of a traceback ---------------------------------------------------------------


MALFORMED_URLS = {
    "mysql://postgres@127.0.0.1:5432/salesflow": "DATABASE_URL must start with postgresql:// (got scheme 'mysql')",
    "postgresql://postgres@127.0.0.1:port/x": "DATABASE_URL is malformed (Port could not be cast to integer",
    "postgresql://postgres@127.0.0.1:5432/": "DATABASE_URL names no database (postgresql://host:port/NAME)",
}


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_malformed_database_url_is_refused_with_what_is_wrong(url):
    with pytest.raises(DatabaseUrlError) as refused:
        parse_database_url(url)
    assert str(refused.value).startswith(MALFORMED_URLS[url])
    assert one_line(str(refused.value))


def test_a_malformed_database_url_ends_the_process_in_one_line():
    """The settings read the URL as the process starts: manage.py turns the refusal into one line."""
    url = "postgresql://postgres@127.0.0.1:port/x"
    result = manage("migrate_phase", "status", env=manage_env(url))
    assert result.returncode == 1
    assert one_line(result.stderr), result.stderr
    assert MALFORMED_URLS[url] in result.stderr, result.stderr


@pytest.fixture
def fresh_database() -> Any:
    name = f"{connection.settings_dict['NAME']}_fresh_{os.getpid()}"
    with psycopg_connect("postgres") as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with psycopg_connect("postgres") as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_phase_1_on_a_database_without_the_legacy_layout_is_refused_and_writes_nothing(fresh_database, tmp_path):
    env = manage_env(
        database_url(fresh_database), SALESFLOW_BACKUP_DIR=str(tmp_path), SALESFLOW_ROLE_PREFIX=f"sftest{os.getpid()}"
    )

    refused = manage("migrate_phase", "prepare", "--noinput", env=env)

    assert refused.returncode == 1
    assert one_line(refused.stderr), refused.stderr
    assert "holds nothing of the legacy SalesFlow layout" in refused.stderr
    with psycopg_connect(fresh_database) as conn:
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").fetchone() == (
            0,
        )
    assert not list(tmp_path.iterdir())  # no backup taken


def test_first_runs_at_once_on_a_fresh_database_end_in_one_line(fresh_database, tmp_path):
    env = manage_env(
        database_url(fresh_database), SALESFLOW_BACKUP_DIR=str(tmp_path), SALESFLOW_ROLE_PREFIX=f"sftest{os.getpid()}"
    )
    seeded = manage("seed_legacy", "--tenants", "1", "--contacts", "5", "--activities", "5", env=env)
    assert seeded.returncode == 0, seeded.stderr
    runs = [start_manage("migrate_phase", "prepare", "--noinput", env=env) for _ in range(4)]
    results = [(r.wait(timeout=300), r.stderr.read() if r.stderr else "") for r in runs]
    for code, stderr in results:
        assert code == 0 or (code == 1 and one_line(stderr) and "another migration is running" in stderr), stderr
    assert any(code == 0 for code, _ in results)
    with psycopg_connect(fresh_database) as conn:
        # the admin site's login records failed attempts (django-axes): without them every login is a 500
        assert conn.execute("SELECT to_regclass('public.axes_accessattempt') IS NOT NULL").fetchone() == (True,)


def test_jobs_above_the_free_connections_are_capped_with_a_note(prepared):
    ctx = MigrationContext(config=get_config(), jobs=10**6)
    note = orchestration.cap_jobs(ctx)
    max_connections = int(db.fetchvalue("SHOW max_connections"))
    assert note is not None
    assert "running with --jobs" in note
    assert 1 <= ctx.jobs < max_connections
    connection.close()
    result = manage("migrate_phase", "schemas", "--jobs", "100000", "--noinput", env=runner_env())
    assert result.returncode == 0, result.stderr
    assert "--jobs 100000 is more than the server has free connections for" in result.stdout


@pytest.mark.parametrize("selector", [("--tenant", "acme_0001"), ("--skip-schema", "tenant_globex_0002")])
def test_restore_of_one_tenant_is_refused_before_anything_changes(schemas_ready, selector):
    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "rollback", "--restore", *selector, interactive=False)

    assert one_line(str(refused.value))
    assert "--restore brings the whole database back" in str(refused.value)
    assert catalog.table_exists("tenant_acme_0001", "contact_data_contacts")  # nothing was restored
    assert not MigrationRecord.objects.filter(phase="rollback").exists()


def test_a_restore_its_backup_check_refused_leaves_no_failure_behind(migrated: dict[str, Any]) -> None:
    """The check changed nothing: once the operator has put things right, the refusal is history, not a
    failure that holds `status --check` and the deploy gate at failed for good."""
    from migrator.reports.status import status_report

    info = backup.latest_backup(PreparePhase.BACKUP, get_config().backup_dir)
    assert info is not None
    moved = Path(f"{info.path}.aside")
    Path(info.path).rename(moved)
    try:
        with pytest.raises(CommandError):
            run("migrate_phase", "rollback", restore=True, interactive=False)
    finally:
        moved.rename(info.path)
    refused = MigrationRecord.objects.filter(phase="rollback", step="check_backup").latest_attempts().get()
    assert refused.status == Status.FAILED  # kept in the history
    assert [r.migration_id for r in status_report().failures] == []
