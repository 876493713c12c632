"""``rollback --restore`` restores any database: whatever it holds besides the legacy schemas, a kill at
any point, and a ``pg_restore`` that fails (see migrator/ops/restore.py and docs/reliability.md)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings as django_settings
from django.core.management.base import CommandError
from django.db import connection, connections
from psycopg import sql

from migrator import catalog, db
from migrator.config import get_config
from migrator.models import MigrationRecord, Status
from migrator.ops import admin_accounts, backup, binaries, databases, restore
from migrator.phases import ORDERED
from migrator.phases.prepare import PreparePhase, server_major
from tests.helpers import legacy_fingerprints, run
from tests.migrator.helpers import kill_when, manage, manage_env, manage_here, one_line, psycopg_connect

TENANTS = ["acme_0001", "globex_0002", "empty_0001"]
PHASES = tuple(p.name for p in ORDERED)

# What a real legacy database holds besides the legacy schemas, each of which made the earlier restore
# (drop the legacy schemas and public's tables, pg_restore over what is left) stop at "already exists".
EXTRAS = [
    # (a) a function, a type, a sequence and a view in public
    "CREATE FUNCTION public.shout(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT upper(t) $$",
    "CREATE TYPE public.mood AS ENUM ('happy', 'sad')",
    "CREATE SEQUENCE public.invoice_numbers START 1000",
    "CREATE VIEW public.shouted AS SELECT public.shout('hello') AS greeting, 'happy'::public.mood AS mood",
    # (b) a publication of a legacy table
    "CREATE PUBLICATION legacy_changes FOR TABLE tenant_acme_0001.contacts",
    # (c) extensions, one in public and one in a schema of its own
    "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA public",
    "CREATE SCHEMA extensions",
    "CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA extensions",
    # (d) an event trigger that logs every DDL command (the migration's phases write to its log)
    "CREATE TABLE public.ddl_log (id bigserial PRIMARY KEY, tag text NOT NULL)",
    (
        "CREATE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO public.ddl_log (tag) VALUES (tg_tag); END $$"
    ),
    "CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION public.log_ddl()",
]


def runner_env() -> dict[str, str]:
    conf = django_settings.SALESFLOW
    return manage_env(SALESFLOW_BACKUP_DIR=str(conf["BACKUP_DIR"]), SALESFLOW_ROLE_PREFIX=conf["ROLE_PREFIX"])


def client_tool(name: str) -> Path:
    return binaries.find_binary(name, server_major())


def connection_args(database: str | None = None) -> list[str]:
    args, _env = backup.connection_args()
    if database is not None:
        args[args.index("-d") + 1] = database
    return args


def script(output: str) -> list[str]:
    """A pg_dump / pg_restore script without what differs from one run to the next: pg_dump 15.14+ wraps
    it in ``\\restrict KEY`` / ``\\unrestrict KEY`` with a random key, and comments carry no object."""
    return [line for line in output.splitlines() if line and not line.startswith(("\\restrict", "\\unrestrict", "--"))]


# PostgreSQL prints a CHECK constraint on a varchar column "IN (...)" (Django's choices constraints)
# with other casts and parentheses once its printed form has been parsed again: pg_dump -> pg_restore
# -> pg_dump is not a fixpoint for it, though the constraint is the same. Compared without them.
CHECK_NOISE = re.compile(r"::character varying|::text\[\]|::text|[()]")


def canonical(line: str) -> str:
    return CHECK_NOISE.sub("", line) if " CHECK " in line else line


def schema_dump() -> list[str]:
    """``pg_dump --schema-only`` of this database. The tracking tables' rows are not in it (data)."""
    connection.close()
    out = subprocess.run(
        [str(client_tool("pg_dump")), "--schema-only", *connection_args()], capture_output=True, text=True, check=True
    )
    return [canonical(line) for line in script(out.stdout)]


def kept_by_a_restore() -> list[str]:
    """The tables a restore keeps as they are now, not as the backup has them: the tracking history and
    the admin site's accounts."""
    return ["schema_migrations", *(model._meta.db_table for model in admin_accounts.account_models())]


def by_table(lines: list[str]) -> dict[str, list[str]]:
    """A data script as each table's rows (in order of their text) and the other statements (sequence
    values), without the rows of the tables a restore keeps (:func:`kept_by_a_restore`) and the values of
    their id sequences (moved on with them). pg_dump and pg_restore write the tables in different orders."""
    kept = kept_by_a_restore()
    tables: dict[str, list[str]] = {"": []}
    table = None
    for line in lines:
        if line.startswith("COPY "):
            table = line
            tables[table] = []
        elif table is not None:
            if line == "\\.":
                table = None
            else:
                tables[table].append(line)
        elif not any(f"public.{name}_id_seq'" in line for name in kept):
            tables[""].append(line)
    for key in [key for key in tables if any(key.startswith(f"COPY public.{name} ") for name in kept)]:
        del tables[key]
    return {key: sorted(rows) for key, rows in tables.items()}


def data_dump() -> dict[str, list[str]]:
    """``pg_dump --data-only`` of this database, the tracking history left out."""
    connection.close()
    out = subprocess.run(
        [str(client_tool("pg_dump")), "--data-only", *connection_args()], capture_output=True, text=True, check=True
    )
    return by_table(script(out.stdout))


def backup_data() -> dict[str, list[str]]:
    """The data the backup holds (the database at phase 1's backup step), the tracking history left out."""
    info = backup.latest_backup(PreparePhase.BACKUP)
    assert info is not None
    out = subprocess.run(
        [str(client_tool("pg_restore")), "--data-only", "-f", "-", info.path],
        capture_output=True,
        text=True,
        check=True,
    )
    return by_table(script(out.stdout))


def backup_schema() -> list[str]:
    """The schema the backup holds, as a script (what pg_dump of the backed-up database printed)."""
    info = backup.latest_backup(PreparePhase.BACKUP)
    assert info is not None
    out = subprocess.run(
        [str(client_tool("pg_restore")), "--schema-only", "-f", "-", info.path],
        capture_output=True,
        text=True,
        check=True,
    )
    return [canonical(line) for line in script(out.stdout)]


def database_properties() -> dict[str, Any]:
    """What a dump without --create leaves out: owner, comment, limit, grants, settings, locale."""
    row = db.fetchone(
        "SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database'), datconnlimit, "
        "(SELECT array_agg(a::text ORDER BY a::text) FROM unnest(datacl) a), "
        "pg_encoding_to_char(encoding), datcollate, datctype, "
        "(SELECT array_agg(coalesce(pg_get_userbyid(nullif(setrole, 0)), '*') || ':' "
        "|| array_to_string(setconfig, ';') ORDER BY 1) FROM pg_db_role_setting WHERE setdatabase = d.oid) "
        "FROM pg_database d WHERE datname = current_database()"
    )
    assert row is not None
    names = ("owner", "comment", "connection_limit", "grants", "encoding", "collate", "ctype", "settings")
    return dict(zip(names, row, strict=True))


def databases_like(name: str) -> list[str]:
    return [
        str(r[0])
        for r in db.fetchall(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
            [name.replace("_", "\\_") + "\\_re%"],
        )
    ]


def assert_restored(schema: list[str], data: dict[str, list[str]], history_ids: set[int]) -> None:
    connection.close()
    assert schema_dump() == schema
    assert data_dump() == data
    assert history_ids < set(MigrationRecord.objects.values_list("id", flat=True))  # history kept, rollback added
    assert MigrationRecord.objects.filter(phase="rollback", step="restore_backup").latest("attempt").status == (
        Status.COMPLETED
    )
    assert restore.interrupted_restore(get_config().backup_dir) is None
    assert databases_like(connection.settings_dict["NAME"]) == []  # no copy, no replaced database left


def extension_not_shipped(statement: str) -> bool:
    """A CREATE EXTENSION of an extension this server does not ship (the embedded server ships no contrib
    module; the machine's server ships both): the rest of the database's extras are still restored."""
    found = re.match(r"CREATE EXTENSION IF NOT EXISTS (\w+)", statement)
    return bool(found) and not db.fetchvalue(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = %s)", [found.group(1)]
    )


def other_owners() -> tuple[str, str]:
    """The application's role and a reporting role (cluster-wide: named with this run's role prefix)."""
    prefix = get_config().role_prefix
    return f"{prefix}_legacy_app", f"{prefix}_reporting"


# Objects the migrator's login does not own: a tenant's schema and tables the application made, and a
# reporting schema whose view and function read a tenant's table with the reporting role's rights.
OWNED_BY_OTHERS = [
    "ALTER SCHEMA tenant_acme_0001 OWNER TO {app}",
    "ALTER TABLE tenant_acme_0001.contacts OWNER TO {app}",
    "ALTER TABLE tenant_acme_0001.contact_types OWNER TO {app}",
    "CREATE SCHEMA reporting AUTHORIZATION {report}",
    "GRANT USAGE ON SCHEMA tenant_globex_0002 TO {report}",
    "GRANT SELECT ON tenant_globex_0002.contacts TO {report}",
    "SET ROLE {report}",
    "CREATE VIEW reporting.globex_contacts AS SELECT id, email FROM tenant_globex_0002.contacts",
    (
        "CREATE FUNCTION reporting.contact_count() RETURNS bigint LANGUAGE sql STABLE "
        "AS 'SELECT count(*) FROM reporting.globex_contacts'"
    ),
    "RESET ROLE",
]


@pytest.fixture
def extras_backed_up(seeded: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Seeded legacy data plus EXTRAS, objects other roles own and database properties, through phase 1:
    the schema and data dumps of the database as the backup has it."""
    app, report = other_owners()
    for role in (app, report):
        db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        for statement in OWNED_BY_OTHERS:
            db.execute(sql.SQL(statement).format(app=sql.Identifier(app), report=sql.Identifier(report)))
        for statement in EXTRAS:
            if extension_not_shipped(statement):
                continue
            db.execute(statement)
        name = sql.Identifier(connection.settings_dict["NAME"])
        db.execute(sql.SQL("COMMENT ON DATABASE {} IS 'the legacy CRM'").format(name))
        db.execute(sql.SQL("ALTER DATABASE {} SET temp_tablespaces TO 'pg_default'").format(name))
        db.execute(sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET salesflow_test.marker TO 'kept'").format(name))
        db.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 90").format(name))
        db.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(name))
        run("migrate_phase", "prepare", interactive=False)
        yield {"schema": schema_dump(), "properties": database_properties()}
    finally:
        roles = sql.SQL(", ").join(map(sql.Identifier, (app, report)))
        db.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(roles))  # in the database as the test left it
        db.execute(sql.SQL("DROP OWNED BY {}").format(roles))  # their grants
        db.execute(sql.SQL("DROP ROLE {}").format(roles))


def test_restore_after_cutover_brings_back_a_database_with_functions_publications_extensions_event_triggers(
    extras_backed_up,
):
    before = legacy_fingerprints(TENANTS)
    for phase in PHASES[1:]:
        run("migrate_phase", phase, interactive=False, batch_size=100)
    assert db.fetchvalue("SELECT count(*) FROM public.ddl_log") > 0  # the phases' DDL was logged
    history_ids = set(MigrationRecord.objects.values_list("id", flat=True))

    run("migrate_phase", "rollback", interactive=False, restore=True)

    # The schema as pg_dump prints it right after phase 1 (the tracking history is data), and the data
    # as the backup holds it: taken at phase 1's first step, before it registered the tenants.
    assert_restored(extras_backed_up["schema"], backup_data(), history_ids)
    assert schema_dump() == backup_schema()
    assert legacy_fingerprints(TENANTS) == before
    assert database_properties() == extras_backed_up["properties"]
    assert not catalog.schema_exists(get_config().archive_schema)
    app, report = other_owners()
    assert owner_of("tenant_acme_0001.contacts") == owner_of("tenant_acme_0001.contact_types") == app
    assert owner_of("reporting.globex_contacts") == report
    assert db.fetchvalue("SELECT reporting.contact_count()") == 120  # read with the reporting role's rights


def owner_of(table: str) -> str:
    return str(db.fetchvalue("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass", [table]))


def test_a_failing_pg_restore_shows_its_error_and_leaves_the_database_as_it_was(migrated):
    """A GRANT in the backup to a role that is gone by the time of the restore: pg_restore stops there."""
    role = f"{get_config().role_prefix}_gone_reader"
    db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("GRANT SELECT ON tenant_acme_0001.contacts TO {}").format(sql.Identifier(role)))
    MigrationRecord.objects.filter(phase="prepare", step="backup").update(status=Status.ROLLED_BACK)
    run("migrate_phase", "prepare", interactive=False)  # a new backup, with the GRANT
    info = backup.latest_backup(PreparePhase.BACKUP)
    assert info is not None
    db.execute(sql.SQL("REVOKE ALL ON tenant_acme_0001.contacts FROM {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    schema, data = schema_dump(), data_dump()
    history_ids = set(MigrationRecord.objects.values_list("id", flat=True))

    with pytest.raises(CommandError) as failed:
        run("migrate_phase", "rollback", interactive=False, restore=True)
    message = str(failed.value)
    assert one_line(message), message
    assert "pg_restore failed" in message
    assert f'role "{role}" does not exist' in message
    assert "was left as it was" in message

    connection.close()
    assert schema_dump() == schema  # nothing dropped, nothing added
    assert data_dump() == data
    assert history_ids < set(MigrationRecord.objects.values_list("id", flat=True))
    failure = MigrationRecord.objects.filter(phase="rollback", step="restore_backup").latest("attempt")
    assert failure.status == Status.FAILED
    assert f'role "{role}" does not exist' in failure.error_message
    assert databases_like(connection.settings_dict["NAME"]) == []  # the copy was dropped
    assert restore.interrupted_restore(get_config().backup_dir) is None


def test_a_restore_that_failed_after_dropping_the_service_roles_leaves_the_migration_incomplete(migrated):
    """The live database lost its service roles, the backup is not back: `status --check` said complete."""
    role = f"{get_config().role_prefix}_gone_reader"
    db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("GRANT SELECT ON tenant_acme_0001.contacts TO {}").format(sql.Identifier(role)))
    MigrationRecord.objects.filter(phase="prepare", step="backup").update(status=Status.ROLLED_BACK)
    run("migrate_phase", "prepare", interactive=False)  # a new backup, with the GRANT: its restore will fail
    db.execute(sql.SQL("REVOKE ALL ON tenant_acme_0001.contacts FROM {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    for phase in ("security", "verify", "cutover"):
        run("migrate_phase", phase, interactive=False)
    assert manage_here("migrate_phase", "status", "--check").returncode == 0

    with pytest.raises(CommandError, match="pg_restore failed"):
        run("migrate_phase", "rollback", interactive=False, restore=True)

    assert not any(catalog.role_exists(r) for r in get_config().service_roles.values())  # dropped before
    checked = manage_here("migrate_phase", "status", "--check")
    assert checked.returncode == 1
    assert "restore_backup" in checked.stdout
    assert "Migration incomplete" in checked.stdout
    # killed there instead (the row a killed run leaves): the deploy gate says to finish it with --restore
    MigrationRecord.objects.filter(phase="rollback", step="restore_backup").update(
        status=Status.RUNNING, error_message=None
    )
    gate = manage_here("migrate_phase", "status", "--deploy-check")
    assert gate.returncode == 1
    assert "rerun `migrate_phase rollback --restore` to finish it" in gate.stdout
    listed = manage_here("migrate_phase", "status").stdout
    assert "UNFINISHED rollback/*/restore_backup" in listed
    assert "did not finish" in listed
    assert ": None" not in listed  # the step's missing error, printed as is


# --- killed at each point ----------------------------------------------------------------------------------


def restore_sessions(admin: psycopg.Connection, database: str, query_like: str) -> int | None:
    """A session of the restore (pg_restore, or the swap on the maintenance database) waiting for a lock
    in a statement that contains ``query_like``."""
    row = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND strpos(query, %s) > 0 "
        "AND (datname = 'postgres' AND strpos(query, %s) > 0 OR starts_with(datname, %s))",
        [query_like, database, database],
    ).fetchone()
    return row[0] if row else None


def killed_and_rerun(arrange: Any, history_ids: set[int]) -> subprocess.CompletedProcess[str]:
    """``arrange(admin)`` holds locks and kills a restore (a child process); the rerun finishes it."""
    with psycopg_connect("postgres") as admin:
        arrange(admin)
    assert restore.interrupted_restore(get_config().backup_dir) is not None
    connection.close()
    rerun = manage("migrate_phase", "rollback", "--restore", "--noinput", env=runner_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "an interrupted restore was found" in rerun.stdout
    restores = list(MigrationRecord.objects.filter(phase="rollback", step="restore_backup").order_by("attempt"))
    assert [r.status for r in restores] == [Status.FAILED, Status.COMPLETED]
    assert restores[0].error_message.startswith("interrupted:")
    assert history_ids < set(MigrationRecord.objects.values_list("id", flat=True))
    return rerun


def test_a_restore_killed_while_it_swaps_the_databases_is_finished_by_rerunning_it(migrated):
    """Killed while the swap's renames wait for a lock on the database: the transaction never commits."""
    name = connection.settings_dict["NAME"]
    before, history_ids = legacy_fingerprints(TENANTS), set(MigrationRecord.objects.values_list("id", flat=True))
    migrated_schema = schema_dump()

    def arrange(admin: psycopg.Connection) -> None:
        with psycopg_connect("postgres") as holder:
            holder.execute("BEGIN")
            holder.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(name)))  # locks it
            waiting = kill_when(
                ["migrate_phase", "rollback", "--restore", "--noinput"],
                lambda: restore_sessions(admin, name, "RENAME TO"),
                "the swap to wait for the database",
                env=runner_env(),
            )
            admin.execute("SELECT pg_terminate_backend(%s)", [waiting])  # as a dropped connection would
            holder.execute("ROLLBACK")
        connection.close()
        assert schema_dump() == migrated_schema  # not swapped: the database is as it was
        assert history_ids <= set(MigrationRecord.objects.values_list("id", flat=True))
        oid = db.fetchvalue("SELECT oid FROM pg_database WHERE datname = current_database()")
        assert f"{name}_restoring_{oid}" in databases_like(name)  # the unfinished copy

    rerun = killed_and_rerun(arrange, history_ids)
    assert "the database was left as it was" in rerun.stdout
    assert_restored(backup_schema(), backup_data(), history_ids)
    assert legacy_fingerprints(TENANTS) == before


def test_a_journal_of_a_restore_that_had_swapped_is_finished_by_dropping_the_replaced_database(migrated):
    """The state a kill right after the swap leaves: this database is already the restored one, the
    journal names the database it replaced (by its oid) under its new name. Not reached with a real
    kill: between the swap's commit and the drop nothing waits for a lock a test could hold."""
    name = connection.settings_dict["NAME"]
    run("migrate_phase", "rollback", interactive=False, restore=True)
    history_ids = set(MigrationRecord.objects.values_list("id", flat=True))
    info = backup.latest_backup(PreparePhase.BACKUP)
    assert info is not None
    with restore.maintenance_connection() as admin:
        names = restore.restore_names(admin, name)
        replaced = names.replaced.replace(f"_{names.oid}", "_1")
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(replaced)))
        old_oid = databases.database_oid(admin, replaced)
        assert old_oid is not None
    swapped = restore.RestoreNames(name, old_oid, names.scratch.replace(f"_{names.oid}", "_1"), replaced)
    restore.write_journal(get_config().backup_dir, info, restore.save_history(get_config().backup_dir)[1], swapped)
    connection.close()

    rerun = manage("migrate_phase", "rollback", "--restore", "--noinput", env=runner_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"it had replaced the database with the backup; the replaced database {replaced} is dropped" in rerun.stdout
    assert_restored(backup_schema(), backup_data(), history_ids)


def test_a_restore_killed_between_creating_its_new_database_and_marking_it_is_finished_by_one_rerun(migrated):
    """The state such a kill leaves: the journal, then the new database without the comment that marks it a
    restore's. The rerun refused it as "not a restore of" this database, and only the next one went on."""
    name = connection.settings_dict["NAME"]
    info = backup.latest_backup(PreparePhase.BACKUP)
    assert info is not None
    history_ids = set(MigrationRecord.objects.values_list("id", flat=True))
    with restore.maintenance_connection() as admin:
        names = restore.restore_names(admin, name)
        restore.write_journal(get_config().backup_dir, info, restore.save_history(get_config().backup_dir)[1], names)
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(names.scratch)))

    out = run("migrate_phase", "rollback", interactive=False, restore=True)

    assert f"the unfinished copy {names.scratch} is dropped" in out
    assert_restored(backup_schema(), backup_data(), history_ids)
    assert databases_like(name) == []


@pytest.fixture
def restorer(migrated) -> Iterator[str]:
    """A login that owns the test's database and may create databases (in its tablespace too), reads and
    writes every table, and is no superuser; dropped afterwards whatever the test did."""
    role = f"{get_config().role_prefix}_restorer"
    name = connection.settings_dict["NAME"]
    db.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(role)))
    try:
        db.execute(sql.SQL("GRANT pg_read_all_data, pg_write_all_data TO {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(role)))
        tablespace = db.fetchvalue(
            "SELECT spcname FROM pg_tablespace t JOIN pg_database d ON d.dattablespace = t.oid WHERE d.datname = %s",
            [name],
        )
        if tablespace != "pg_default":  # the tests' stages in RAM: the new database goes where the current one is
            db.execute(sql.SQL("GRANT CREATE ON TABLESPACE {} TO {}").format(*map(sql.Identifier, (tablespace, role))))
        yield role
    finally:
        db.execute(sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(sql.Identifier(name)))
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))  # its grants, the tablespace's too
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_restorer_who_may_not_give_objects_back_to_their_owners_is_told_in_one_line(restorer):
    """The backup's objects belong to the superuser that made them; a restorer that owns the database and may
    create databases, but is no member of that role, is refused by pg_restore before anything changes."""
    name = connection.settings_dict["NAME"]
    schema, data = schema_dump(), data_dump()
    settings_dict = connection.settings_dict
    superuser = settings_dict["USER"]
    connections.close_all()
    settings_dict["USER"] = restorer
    try:
        with pytest.raises(CommandError) as refused:
            run("migrate_phase", "rollback", interactive=False, restore=True)
    finally:
        connections.close_all()
        settings_dict["USER"] = superuser
    message = str(refused.value)
    assert one_line(message), message
    assert re.search(backup.OWNER_REFUSED, message), message
    assert "restore as a superuser or as a member of that role" in message
    assert f"database {name} was left as it was" in message
    assert databases_like(name) == []  # the new database the backup went into is dropped
    assert schema_dump() == schema
    assert data_dump() == data
