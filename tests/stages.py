"""The stages of a migration the tests start from, each built once per session and copied per test.

A stage (clean, seeded, prepared, schemas ready, migrated; larger schemas ready, for the tests that
kill a copy half way) is built the first time a test asks for
it: a working database is brought to the previous stage, the stage's command runs in it, and the
result is copied to a template database. A test that starts from a stage gets a new working
database created from the template (``CREATE DATABASE ... TEMPLATE``, a copy of its files), and
Django's settings point at it for the test, the way pytest-django points them at the test database:
every connection opened meanwhile (worker threads, ``manage.py`` children, ``pg_dump``) goes there.
The test database itself stays clean; afterwards the settings point back at it.

A used working database is dropped by a background thread: ``DROP DATABASE`` makes the server
checkpoint, which takes seconds on a busy machine, and nothing waits for it but the session's end.

Every name derives from the test database's name, so runs against other database names on the same
server never share one, and leftovers of a killed run are dropped when the next session starts.
Roles are cluster-wide and not part of a database: no stage creates any (phase 4 is the first that
does); ``release`` drops the service roles a test made, before the working database goes.

Phase 1 of the ``prepared`` stage records a ``pg_dump`` taken once into a folder of the session;
tests of the backup itself take their own (see tests/migrator/test_prepare.py).
"""

from __future__ import annotations

import hashlib
import queue
import re
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.test import override_settings
from psycopg import sql

from migrator.config import get_config
from migrator.devtools.reset import drop_roles_and_everything_they_own
from tests.helpers import restore_clean_database, run

SEEDED = {"tenants": ["acme_0001", "globex_0002", "empty_0001"], "contacts": 120, "activities": 240}


def seeded_data() -> dict[str, Any]:
    """What the seeded stage holds (a copy the test may change)."""
    return {**SEEDED, "tenants": list(SEEDED["tenants"])}


def seed() -> None:
    """Three tenants (2 with data, 1 empty) of legacy data."""
    run("seed_legacy", tenants=2, contacts=SEEDED["contacts"], activities=SEEDED["activities"], empty_tenants=1, seed=7)


# Two tenants big enough for a copy to be caught half way by a kill test (thousands of rows, batches).
LARGER = {"tenants": 2, "contacts": 4_000, "activities": 8_000}


def seed_larger_and_build_schemas() -> None:
    """The larger tenants after phases 1 and 2."""
    run("seed_legacy", tenants=LARGER["tenants"], contacts=LARGER["contacts"], activities=LARGER["activities"], seed=5)
    run("migrate_phase", "prepare", interactive=False)
    run("migrate_phase", "schemas", interactive=False)


# stage -> (the stage it starts from, what turns that one into this one)
STAGES: dict[str, tuple[str | None, Callable[[], object]]] = {
    "clean": (None, restore_clean_database),
    "larger_schemas_ready": ("clean", seed_larger_and_build_schemas),
    "seeded": ("clean", seed),
    "prepared": ("seeded", lambda: run("migrate_phase", "prepare", interactive=False)),
    "schemas_ready": ("prepared", lambda: run("migrate_phase", "schemas", interactive=False)),
    "migrated": ("schemas_ready", lambda: run("migrate_phase", "data", interactive=False, batch_size=50)),
}
MAX_BASE = 40  # leaves room for the suffixes within PostgreSQL's 63 bytes


def admin_connection(conf: dict[str, Any]) -> psycopg.Connection:
    """An autocommit connection to the server's ``postgres`` database, as the tests' user.

    Its commits do not wait for the WAL flush: a test's database copy need not survive a crash of
    the server, and ``CREATE DATABASE`` then returns in about a third of the time.
    """
    return psycopg.connect(
        dbname="postgres",
        options="-c synchronous_commit=off",
        user=conf["USER"] or None,
        password=conf["PASSWORD"] or None,
        host=conf["HOST"] or None,
        port=conf["PORT"] or None,
        autocommit=True,
    )


def drop_database(admin: psycopg.Connection, name: str) -> None:
    if admin.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", [name]).fetchone() == (True,):
        admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name)))
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class BackgroundDrops:
    """Drops databases on a thread of its own, one after the other."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.names: queue.Queue[str | None] = queue.Queue()
        self.thread: threading.Thread | None = None

    def drop(self, name: str) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="drop-stage-databases", daemon=True)
            self.thread.start()
        self.names.put(name)

    def wait(self) -> None:
        if self.thread is not None:
            self.names.put(None)
            self.thread.join()
            self.thread = None

    def _work(self) -> None:
        admin = None
        while (name := self.names.get()) is not None:
            try:
                if admin is None or admin.closed:
                    admin = admin_connection(self.conf)
                drop_database(admin, name)
            except psycopg.Error as exc:  # left for the sweep at the session's end
                warnings.warn(f"could not drop {name}: {exc}", stacklevel=1)
        if admin is not None:
            admin.close()


class StageDatabases:
    """Template databases of the stages, and the switch of Django's settings to a copy of one."""

    def __init__(self, test_database: str, backup_dir: Path) -> None:
        self.test_database = test_database
        self.backup_dir = backup_dir
        self.conf = dict(connection.settings_dict)
        self.base = test_database
        if len(test_database) > MAX_BASE:
            self.base = f"{test_database[: MAX_BASE - 11]}_{hashlib.sha1(test_database.encode()).hexdigest()[:10]}"
        self.built: set[str] = set()
        self.copies = 0
        self.working: str | None = None  # the working database Django points at, if any
        self.drops = BackgroundDrops(self.conf)

    def template(self, stage: str) -> str:
        return f"{self.base}_tpl_{stage}"

    def ours(self, name: str) -> bool:
        """A template or working database of a session on this test database (this one or a killed one)."""
        return bool(re.fullmatch(re.escape(self.base) + r"_(stage_\d+|tpl_(" + "|".join(STAGES) + "))", name))

    def use(self, stage: str) -> None:
        """Point Django at a new copy of ``stage`` (built first if no test used it yet)."""
        if stage not in self.built:
            self._build(stage)  # leaves the working database in that stage
            return
        self._point_at_copy_of(self.template(stage))

    def release(self) -> None:
        """Point Django back at the test database; drop the working copy and the service roles the test made."""
        if self.working is None:
            return
        try:
            connections.close_all()
            # in the working database, the only one they have grants in
            drop_roles_and_everything_they_own(list(get_config().service_roles.values()))
        finally:
            self._point_at(self.test_database)
            self.drops.drop(self.working)
            self.working = None

    def _build(self, stage: str) -> None:
        parent, step = STAGES[stage]
        if parent is None:  # the test database as migrations left it (flush keeps it so), made sure clean
            self._point_at_copy_of(self.test_database)
        else:
            self.use(parent)
        # Built under the settings of whichever test comes first: keep its backup out of that test's folder.
        with override_settings(SALESFLOW={**settings.SALESFLOW, "BACKUP_DIR": self.backup_dir}):
            step()
        template = self.template(stage)
        with admin_connection(self.conf) as admin:
            self._copy(admin, self.working, template)  # type: ignore[arg-type]
            # a template nobody connects to, so it can always be copied
            admin.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                    sql.Identifier(template)
                )
            )
        self.built.add(stage)

    def _point_at_copy_of(self, source: str) -> None:
        self.copies += 1
        working = f"{self.base}_stage_{self.copies}"
        with admin_connection(self.conf) as admin:
            self._copy(admin, source, working)
        previous, self.working = self.working, working
        self._point_at(working)
        if previous is not None:
            self.drops.drop(previous)

    @staticmethod
    def _point_at(name: str) -> None:
        """What pytest-django does to point the connections at the test database."""
        connections.close_all()
        settings.DATABASES[DEFAULT_DB_ALIAS]["NAME"] = name
        connection.settings_dict["NAME"] = name

    @staticmethod
    def _copy(admin: psycopg.Connection, source: str, target: str) -> None:
        """``target`` := a copy of ``source`` (nobody may be connected to the source meanwhile)."""
        connections.close_all()
        drop_database(admin, target)  # a leftover of a killed run; normally there is none
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [source],
        )
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(target), sql.Identifier(source)))

    def drop_all(self) -> None:
        """Drop the templates and working copies, this session's or ones a killed run left behind."""
        self.drops.wait()
        with admin_connection(self.conf) as admin:
            names = [
                r[0]
                for r in admin.execute(
                    "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [self.base]
                ).fetchall()
            ]
            for name in filter(self.ours, names):
                drop_database(admin, name)
        self.built.clear()
