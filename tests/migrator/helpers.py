"""Helpers of the migrator tests: catalog snapshots, tracking rows, and ``manage.py`` in a subprocess.

Everything reads the real database; nothing here replaces a query with a stand-in.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.management import ManagementUtility
from psycopg import sql

from migrator import db
from migrator.config import get_config
from migrator.models import MigrationRecord, Status
from migrator.tables import TENANT_DATA_TABLES, TableKind, legacy_table, model_columns, reference_table
from tests import warm_children

PROJECT_DIR = Path(__file__).resolve().parents[2]
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
LATER_RELEASE_SETTINGS = "tests.migrator.later_release_settings"


def _tenant_data_tables() -> dict[str, tuple[str, str, str, tuple[str, str]]]:
    """legacy table -> target table, the remapped column and the legacy / shared reference tables it points at."""
    found = {}
    for entry in TENANT_DATA_TABLES:
        for column, legacy_ref in entry.remap.items():  # the tests use each table's first remapped column
            ref = reference_table(legacy_ref)
            found.setdefault(entry.legacy_table, (entry.table, column, legacy_ref, (str(ref.schema), ref.table)))
    return found


TABLES = _tenant_data_tables()


def rows(query: sql.Composable | str, params: Any = None) -> list[tuple[Any, ...]]:
    return db.fetchall(query, params)


def value(query: sql.Composable | str, params: Any = None) -> Any:
    return db.fetchvalue(query, params)


def count(schema: str, table: str) -> int:
    return int(value(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))))


def table_names(schema: str) -> set[str]:
    return {
        r[0]
        for r in rows(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'",
            [schema],
        )
    }


def refused_run(*args: str, step: str, **options: Any) -> tuple[str, MigrationRecord]:
    """``migrate_phase <args>`` that fails in one line; that line and ``step``'s latest attempt, FAILED."""
    from django.core.management import CommandError

    from tests.helpers import run

    with pytest.raises(CommandError) as refused:
        run("migrate_phase", *args, interactive=False, **options)
    assert one_line(str(refused.value)), refused.value
    record = latest(step)
    assert record.status == Status.FAILED
    return str(refused.value), record


def records(**filters: Any) -> list[MigrationRecord]:
    """Tracking rows, oldest first."""
    return list(MigrationRecord.objects.filter(**filters).order_by("id"))


def attempts(migration_id: str) -> list[MigrationRecord]:
    return list(MigrationRecord.objects.filter(migration_id=migration_id).order_by("attempt"))


def latest(migration_id: str) -> MigrationRecord:
    record = MigrationRecord.objects.filter(migration_id=migration_id).order_by("-attempt").first()
    assert record is not None, f"no tracking row for {migration_id}"
    return record


def catalog_snapshot() -> set[tuple[str, str, str]]:
    """Every relation of every non-system schema (name and kind), plus every schema name."""
    relations = rows(
        "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast%%'",
        [list(SYSTEM_SCHEMAS)],
    )
    schemas = rows("SELECT nspname, '', 'schema' FROM pg_namespace")
    return {tuple(r) for r in relations} | {tuple(r) for r in schemas}  # type: ignore[misc]


def all_table_fingerprints() -> dict[str, tuple[int, str]]:
    """Row count and an md5 of the sorted row texts of every ordinary table outside the system schemas."""
    tables = rows(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%' "
        "AND n.nspname NOT LIKE 'pg_toast%%' ORDER BY 1, 2",
        [list(SYSTEM_SCHEMAS)],
    )
    return {f"{schema}.{table}": fingerprint(schema, table) for schema, table in tables}


def fingerprint(schema: str, table: str, conn: psycopg.Connection | None = None) -> tuple[int, str]:
    query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t").format(
        sql.Identifier(schema, table)
    )
    if conn is not None:
        return conn.execute(query).fetchone()  # type: ignore[return-value]
    return db.fetchone(query)  # type: ignore[return-value]


def database_url(name: str | None = None) -> str:
    """A ``DATABASE_URL`` for the database the tests use (TCP or a unix socket folder)."""
    return db.database_url(name)


def manage_env(database_url_value: str | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": database_url_value or database_url(), "PYTHONUNBUFFERED": "1", **extra}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def later_env(**extra: str) -> dict[str, str]:
    """The environment of ``manage.py`` run by a later release (tests/migrator/later_release: its migrations
    and its models)."""
    # roles are cluster-wide: the prefix of this test run's (tests/conftest.py)
    env = manage_env(SALESFLOW_ROLE_PREFIX=get_config().role_prefix, **extra)
    return {**env, "DJANGO_SETTINGS_MODULE": LATER_RELEASE_SETTINGS}


def manage_command(*args: str) -> list[str]:
    return [sys.executable, str(PROJECT_DIR / "manage.py"), *args]


def start_manage(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python manage.py <args>`` started in a child process (stdout and stderr as text pipes)."""
    return warm_children.popen(
        manage_command(*args),
        cwd=PROJECT_DIR,
        env=env or manage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def manage(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python manage.py <args>`` against the test database, in a child process."""
    return warm_children.run(
        manage_command(*args), cwd=PROJECT_DIR, env=env or manage_env(), text=True, timeout=timeout
    )


def manage_here(*args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py <args>`` run the way ``manage.py`` runs it (its argument parsing, its exit codes, what
    it writes to stdout and stderr) but in this process, against the database Django points at.

    A child costs most of a second of Python start-up; tests of what an operator sees for a bad argument
    or a refused run use this, and the tests that need a process of its own (another environment, a kill)
    use ``manage``.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            ManagementUtility(["manage.py", *args]).execute()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(["manage.py", *args], code, stdout.getvalue(), stderr.getvalue())


def psycopg_connect(dbname: str | None = None) -> psycopg.Connection:
    return db.connect_like_django("salesflow-tests", dbname=dbname)


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def one_line(message: str) -> bool:
    return "\n" not in message.strip() and "Traceback" not in message


def content(schema: str, table: str, cols: list[str]) -> tuple[int, int, str]:
    """Rows, distinct ids and an md5 of the sorted row texts over ``cols``."""
    return db.fetchone(
        sql.SQL(
            "SELECT count(*), count(DISTINCT id), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) "
            "FROM (SELECT {cols} FROM {t}) r"
        ).format(cols=db.ident_list(cols), t=sql.Identifier(schema, table))
    )


def plain_columns(legacy: str) -> list[str]:
    """Columns of a tenant data table that are copied as they are (all but the remapped reference id)."""
    entry = legacy_table(legacy, TableKind.TENANT_DATA)
    return [c for c in model_columns(entry.model) if c not in entry.remap]


def wrongly_remapped(schema: str, legacy: str) -> int:
    """Rows whose reference code in the target differs from the legacy one (NULL stays NULL)."""
    if legacy not in TABLES:  # it holds no reference ids
        return 0
    target, column, legacy_ref, shared = TABLES[legacy]
    return value(
        sql.SQL(
            "SELECT count(*) FROM {l} l JOIN {t} t ON t.id = l.id LEFT JOIN {lr} lr ON lr.id = l.{c} "
            "LEFT JOIN {sr} sr ON sr.id = t.{c} WHERE lr.code IS DISTINCT FROM sr.code"
        ).format(
            l=sql.Identifier(schema, legacy),
            t=sql.Identifier(schema, target),
            lr=sql.Identifier(schema, legacy_ref),
            sr=sql.Identifier(*shared),
            c=sql.Identifier(column),
        )
    )


def wait_for_killed_sessions_to_end(
    watcher: psycopg.Connection, ours: list[int], *, keep_test_clients: bool = False
) -> None:
    """After a SIGKILL the server rolls back the dead run's open transactions when it notices its
    sessions are gone: wait for that. ``ours``: backend pids that stay (the test's own);
    ``keep_test_clients``: the test's other clients (application_name salesflow-tests...) stay too."""
    query = (
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> ALL(%s) "
        "AND pid <> pg_backend_pid()"
    )
    if keep_test_clients:
        query += " AND application_name NOT LIKE 'salesflow-tests%%'"
    wait_for(lambda: not watcher.execute(query, [ours]).fetchone(), timeout=30, what="the killed run's sessions to end")


def kill_when(
    args: list[str],
    ready: Any,
    what: str,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    interval: float = 0.05,
) -> Any:
    """Run ``manage.py <args>`` in a child and SIGKILL it once ``ready()`` returns something true;
    returns that. ``env``: the child's environment (default: this test's database, its role prefix)."""
    child = warm_children.popen(
        manage_command(*args),
        cwd=PROJECT_DIR,
        env=env or manage_env(SALESFLOW_ROLE_PREFIX=get_config().role_prefix),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def check() -> Any:
            if child.poll() is not None:
                raise AssertionError(f"the run ended before it could be killed: {child.stderr.read()!r}")  # type: ignore[union-attr]
            return ready()

        found = wait_for(check, timeout=timeout, interval=interval, what=what)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
        return found
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def kill_while_it_waits_for_a_lock(
    args: list[str],
    watcher: psycopg.Connection,
    what: str,
    *,
    ignore: list[int] | None = None,
    query_like: str = "",
    terminate_the_waiting_session: bool = False,
) -> None:
    """:func:`kill_when` one of the run's sessions waits for a lock (a session whose query contains
    ``query_like``; ``ignore``: backend pids of the test's own).

    ``terminate_the_waiting_session``: that session goes too. A statement waiting for a lock outlives
    its client and, when it is a transaction of its own, commits once the lock is free; terminating
    it is what a server restart or a dropped connection would do."""

    def waiting() -> int | None:
        row = watcher.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND pid <> ALL(%s) AND strpos(query, %s) > 0",
            [ignore or [], query_like],
        ).fetchone()
        return row[0] if row else None

    waiting_pid = kill_when(args, waiting, what)
    if terminate_the_waiting_session:
        watcher.execute("SELECT pg_terminate_backend(%s)", [waiting_pid])


def ranged_copy_half_way(watcher: psycopg.Connection) -> tuple[str, str, int] | None:
    """(tenant, table, range row id) of a range half way while another range of its table is done: the
    moment to kill a ranged copy."""
    return watcher.execute(
        "SELECT r.tenant_id, r.target, r.id FROM public.schema_migrations r WHERE r.step = 'copy_range' "
        "AND r.status = 'RUNNING' AND r.rows_copied > 0 AND r.rows_copied < r.rows_expected "
        "AND EXISTS (SELECT FROM public.schema_migrations c WHERE c.step = 'copy_range' AND c.status = 'COMPLETED' "
        "AND c.tenant_id = r.tenant_id AND c.target = r.target) LIMIT 1"
    ).fetchone()
