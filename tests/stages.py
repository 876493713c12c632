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

The templates are shared by the workers of a run (pytest-xdist): the first worker that needs a stage
builds it under an advisory lock, the others wait and copy it. Every name derives from the test
database's name, so runs against other database names on the same server never share one. The process
that starts and ends the run drops the templates at its end, and leftovers of a killed run at its start;
each worker drops its own working copies.
Roles are cluster-wide and not part of a database: no stage creates any (phase 4 is the first that
does); ``release`` drops the service roles a test made, before the working database goes.

The stages' databases live in a tablespace of the run in RAM (``/dev/shm`` on the server's machine), when
the server lets the tests make one (a superuser on Linux; ``SALESFLOW_TEST_TABLESPACE=0`` turns it off):
every ``CREATE DATABASE``, ``CREATE TABLE`` and ``CREATE INDEX`` makes files, and on a file system that
many databases were made and dropped on, finding a free inode for each costs the server more than the
statement's own work (measured on an ext4 disk: a copy of a 10 MB stage 0.36 s there, 0.02 s in RAM).
Nothing a test checks depends on where the files are; the benchmarks run on the server's own disk.

Phase 1 of the ``prepared`` stage records a ``pg_dump`` taken once into a folder of the session;
tests of the backup itself take their own (see tests/migrator/phases/test_prepare.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import shlex
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.test import override_settings
from psycopg import sql

from migrator.config import get_config
from migrator.devtools.reset import drop_roles_and_everything_they_own
from migrator.ops import databases
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
    # online: data --online ran to the end, every scope in two-way sync
    "synced": ("schemas_ready", lambda: run("migrate_phase", "data", "--online", interactive=False, batch_size=50)),
}
MAX_BASE = 40  # leaves room for the suffixes within PostgreSQL's 63 bytes
# The stages of a run take about 200 MB at most (templates, working copies, copies being dropped);
# the server also keeps its own dynamic shared memory in /dev/shm.
TABLESPACE_ROOM_BYTES = 2 * 1024**3


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
    databases.drop_database(admin, name)


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


def point_django_at(values: dict[str, Any]) -> None:
    """What pytest-django does to point the connections at the test database: the default database's
    settings changed (``NAME``, ``HOST``, ...) and every open connection closed, so the next one uses them."""
    connections.close_all()
    settings.DATABASES[DEFAULT_DB_ALIAS].update(values)
    connection.settings_dict.update(values)


def short_name(name: str) -> str:
    """``name``, or a prefix of it with a hash of the whole when it leaves too little room for the suffixes."""
    if len(name) <= MAX_BASE:
        return name
    return f"{name[: MAX_BASE - 11]}_{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def shared_base(test_database: str) -> str:
    """The prefix of the stage templates, shared by every xdist worker of a run (``test_x_gw1`` -> ``test_x``)."""
    return short_name(re.sub(r"_gw\d+$", "", test_database))


def drop_templates(conf: dict[str, Any], test_database: str) -> None:
    """Drop the stage templates and working copies of runs on ``test_database`` (this run's or a killed one's),
    and the run's tablespace with every database left in it (a restore's or a rehearsal's copy).

    Called by the process that starts and ends the run (xdist's controller), when no worker uses them.
    """
    pattern = re.escape(shared_base(test_database)) + r"(_gw\d+)?_(stage_\d+|tpl_(" + "|".join(STAGES) + "))"
    tablespace = tablespace_name(test_database)
    with admin_connection(conf) as admin:
        names = [r[0] for r in admin.execute("SELECT datname FROM pg_database").fetchall()]
        for name in names:
            if re.fullmatch(pattern, name):
                drop_database(admin, name)
        drop_tablespace(admin, tablespace)


# --- the run's tablespace in RAM --------------------------------------------------------------------------


def tablespace_name(test_database: str) -> str:
    return f"{shared_base(test_database)}_ram"


def run_on_server(admin: psycopg.Connection, command: list[str]) -> None:
    """``command`` run by the server, as the operating system user that owns its files (a superuser's ``COPY
    ... TO PROGRAM``): the tablespace's folder must be that user's, and only the server knows who it is."""
    # The program reads what COPY writes first: one that exits before the server has written and closed
    # its pipe (rm, mkdir) fails the statement with "could not close pipe to external command".
    program = "cat >/dev/null && " + " ".join(shlex.quote(part) for part in command)
    admin.execute(sql.SQL("COPY (SELECT) TO PROGRAM {}").format(sql.Literal(program)))


def tablespace_folder(admin: psycopg.Connection, name: str) -> str:
    """A folder in RAM of its own: clusters on one machine each have theirs (a tablespace's folder holds a
    subfolder named after the server's major version, which two clusters of one version would share)."""
    system = admin.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    assert system is not None
    return f"/dev/shm/salesflow-tests-{system[0]}-{name}"


def make_tablespace(conf: dict[str, Any], test_database: str) -> None:
    """The run's tablespace in RAM, where the server lets the tests make one; nothing otherwise (the stages
    then live in the database's own tablespace, only slower). Called after ``drop_templates``, which dropped
    a killed run's."""
    if os.environ.get("SALESFLOW_TEST_TABLESPACE", "1") == "0":
        return
    name = tablespace_name(test_database)
    with admin_connection(conf) as admin:
        try:
            free = ram_free_bytes(admin)
            if free < TABLESPACE_ROOM_BYTES:  # a container's 64 MB /dev/shm: the server's own shared memory
                warnings.warn(
                    f"the stage databases stay in the default tablespace: /dev/shm has {free // 2**20} MiB free, "
                    f"fewer than {TABLESPACE_ROOM_BYTES // 2**20} MiB",
                    stacklevel=1,
                )
                return
            folder = tablespace_folder(admin, name)
            run_on_server(admin, ["mkdir", "-m", "700", "-p", folder])
            admin.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(sql.Identifier(name), sql.Literal(folder)))
        except psycopg.Error as exc:  # not a superuser, no /dev/shm there: the stages stay on disk
            warnings.warn(f"the stage databases stay in the default tablespace: {exc}", stacklevel=1)


def ram_free_bytes(admin: psycopg.Connection) -> int:
    """What ``/dev/shm`` has free on the server's machine (``df`` run by the server)."""
    with admin.transaction():
        admin.execute("CREATE TEMP TABLE shm_free (line text) ON COMMIT DROP")
        admin.execute(sql.SQL("COPY shm_free FROM PROGRAM {}").format(sql.Literal("df -Pk /dev/shm")))
        lines = [row[0] for row in admin.execute("SELECT line FROM shm_free").fetchall()]
    # POSIX output: a header, then "filesystem blocks used available capacity mount" in 1024-byte blocks
    return int(lines[-1].split()[3]) * 1024


def drop_tablespace(admin: psycopg.Connection, name: str) -> None:
    """Drop ``name`` with every database still in it, and its folder (every database in it is a test's)."""
    found = admin.execute("SELECT oid FROM pg_tablespace WHERE spcname = %s", [name]).fetchone()
    if found is None:
        return
    left = admin.execute("SELECT datname FROM pg_database WHERE dattablespace = %s", [found[0]]).fetchall()
    for (database,) in left:
        drop_database(admin, database)
    folder = admin.execute("SELECT pg_tablespace_location(%s)", [found[0]]).fetchone()
    admin.execute(sql.SQL("DROP TABLESPACE {}").format(sql.Identifier(name)))
    if folder is not None and folder[0]:
        run_on_server(admin, ["rm", "-rf", folder[0]])


def run_tablespace(admin: psycopg.Connection, test_database: str) -> str | None:
    """The run's tablespace, if the run made one."""
    name = tablespace_name(test_database)
    found = admin.execute("SELECT 1 FROM pg_tablespace WHERE spcname = %s", [name]).fetchone()
    return name if found else None


class StageDatabases:
    """Template databases of the stages, and the switch of Django's settings to a copy of one.

    The templates are shared by the workers of a run: the first worker that needs a stage builds it
    while it holds an advisory lock, and the others wait for it and copy the result. Each worker makes
    its own working copies.
    """

    def __init__(self, test_database: str, backup_dir: Path) -> None:
        self.test_database = test_database
        self.backup_dir = backup_dir
        self.conf = dict(connection.settings_dict)
        self.base = short_name(test_database)  # of this worker's working copies
        self.shared = shared_base(test_database)  # of the templates
        self.built: set[str] = set()
        self.copies = 0
        self.working: str | None = None  # the working database Django points at, if any
        self.drops = BackgroundDrops(self.conf)
        self.builder: psycopg.Connection | None = None  # holds the builders' lock, while this worker builds
        self.building = 0
        self.admin: psycopg.Connection | None = None  # see _admin
        with admin_connection(self.conf) as admin:  # made by the run's first process, before any worker started
            self.tablespace = run_tablespace(admin, test_database)  # where the stages live, if not on disk

    def template(self, stage: str) -> str:
        return f"{self.shared}_tpl_{stage}"

    def ours(self, name: str) -> bool:
        """A working database of this worker (a leftover of a killed run, at the start)."""
        # with the copies a restore of it left (migrator/ops/restore.py: a test that failed half way)
        return bool(re.fullmatch(re.escape(self.base) + r"_stage_\d+(_(restoring|replaced)_\d+)?", name))

    def use(self, stage: str) -> None:
        """Point Django at a new copy of ``stage`` (built first if no worker built it yet)."""
        if stage not in self.built:
            with self._builders_lock():
                if not self._template_ready(stage):
                    self._build(stage)  # leaves the working database in that stage
                    self.built.add(stage)
                    return
                self.built.add(stage)
        self._point_at_copy_of(self.template(stage))

    def release(self) -> None:
        """Point Django back at the test database; drop the working copy and the service roles the test made."""
        if self.working is None:
            return
        try:
            connections.close_all()
            roles = list(get_config().service_roles.values())
            # Roles are the server's: looked for on the admin connection, and the working database (the only one
            # they have grants in) connected to again only when the test made some (most tests make none).
            made = self._admin().execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [roles]).fetchall()
            if made:
                drop_roles_and_everything_they_own([role for (role,) in made])
        finally:
            self._point_at(self.test_database)
            self.drops.drop(self.working)
            self.working = None

    @contextlib.contextmanager
    def _builders_lock(self) -> Iterator[None]:
        """One builder at a time across the workers (re-entered when a stage builds its parent)."""
        if self.builder is None:
            self.builder = admin_connection(self.conf)
        if self.building == 0:
            self.builder.execute("SELECT pg_advisory_lock(hashtext(%s))", [self.shared])
        self.building += 1
        try:
            yield
        finally:
            self.building -= 1
            if self.building == 0:
                self.builder.execute("SELECT pg_advisory_unlock(hashtext(%s))", [self.shared])

    def _admin(self) -> psycopg.Connection:
        """This worker's admin connection (:func:`admin_connection`), kept from test to test: a connection is
        several milliseconds of the server's CPU, and the copies and role checks of each test needed two.
        Made again when a test ended it."""
        if self.admin is not None and not self.admin.closed:
            try:
                self.admin.execute("SELECT 1")
                return self.admin
            except psycopg.OperationalError:
                self.admin.close()
        self.admin = admin_connection(self.conf)
        return self.admin

    def _template_ready(self, stage: str) -> bool:
        assert self.builder is not None
        found = self.builder.execute(
            "SELECT datistemplate FROM pg_database WHERE datname = %s", [self.template(stage)]
        ).fetchone()
        if found == (False,):  # a copy a builder did not finish (killed): build it again
            drop_database(self.builder, self.template(stage))
        return found == (True,)

    def _build(self, stage: str) -> None:
        parent, step = STAGES[stage]
        if parent is None:  # the test database as migrations left it (flush keeps it so), made sure clean
            self._point_at_copy_of(self.test_database, self.tablespace)  # the stages descend from it
        else:
            self.use(parent)
        # Built under the settings of whichever test comes first: keep its backup out of that test's folder.
        with override_settings(SALESFLOW={**settings.SALESFLOW, "BACKUP_DIR": self.backup_dir}):
            step()
        template = self.template(stage)
        admin = self._admin()
        self._copy(admin, self.working, template)  # type: ignore[arg-type]
        # a template nobody connects to, so it can always be copied; marked so once it is complete
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(sql.Identifier(template))
        )

    def _point_at_copy_of(self, source: str, tablespace: str | None = None) -> None:
        self.copies += 1
        working = f"{self.base}_stage_{self.copies}"
        admin = self._admin()
        self._copy(admin, source, working, tablespace)
        # A test's database need not survive a crash of the server: its commits do not wait for the
        # WAL flush (the migrator's own durability is not what a test here is about).
        admin.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(working)))
        previous, self.working = self.working, working
        self._point_at(working)
        if previous is not None:
            self.drops.drop(previous)

    @staticmethod
    def _point_at(name: str) -> None:
        point_django_at({"NAME": name})

    def _copy(self, admin: psycopg.Connection, source: str, target: str, tablespace: str | None = None) -> None:
        """``target`` := a copy of ``source`` (nobody may be connected to the source meanwhile), in ``source``'s
        tablespace or ``tablespace``."""
        connections.close_all()
        drop_database(admin, target)  # a leftover of a killed run; normally there is none
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [source],
        )
        options = [sql.SQL("TEMPLATE {}").format(sql.Identifier(source))]
        if self.tablespace is not None:
            # Files copied as they are, where WAL_LOG (the default) writes every page into the WAL on the disk:
            # 40-60 CPU-seconds less per run. On the disk its two checkpoints per copy cost more than that.
            options.append(sql.SQL("STRATEGY FILE_COPY"))
        if tablespace is not None:
            options.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(tablespace)))
        admin.execute(sql.SQL("CREATE DATABASE {} {}").format(sql.Identifier(target), sql.SQL(" ").join(options)))

    def drop_working_copies(self) -> None:
        """Drop this worker's working copies (the templates are the run's: see ``drop_templates``)."""
        self.drops.wait()
        for kept in (self.builder, self.admin):
            if kept is not None:
                kept.close()
        self.builder = self.admin = None
        with admin_connection(self.conf) as admin:
            names = [
                r[0]
                for r in admin.execute(
                    "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [self.base]
                ).fetchall()
            ]
            for name in filter(self.ours, names):
                drop_database(admin, name)
