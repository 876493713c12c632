"""The migrator follows the deployed target schema: the columns are the catalog's, not the running
release's models'; a target column the legacy side lacks is filled (database default, else the Django
field's default) or the table refused in one line; deploys during the copy wait for the tenant being
copied, so indexes and constraints end as their migrations say.

The later release is tests/migrator/later_release (``later_release_settings``): NOT NULL columns with a
Django ``default=`` and no database default on ``auth.users`` and the tenant contacts, a column with a
database default, and an index of the contacts removed, one renamed, one added.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import CommandError
from django.db import connection
from psycopg import sql

from migrator.models import DeferredConstraint, MigrationRecord, Status
from tests.helpers import QUICK_LOAD_ARGUMENTS, run
from tests.migrator.helpers import (
    count,
    later_env,
    manage,
    one_line,
    psycopg_connect,
    rows,
    start_manage,
    value,
    wait_for,
)

CONTACTS = "contact_data_contacts"
LATER_MIGRATIONS = [("contact_data", "0002_contact_channel"), ("contact_data", "0003_contact_indexes")]
# The contacts' indexes once 0003 is applied: owner removed, email renamed, company added.
LATER_INDEXES = {
    "contact_data_contacts_pkey",
    "contact_data_email_lookup_idx",
    "contact_data_type_idx",
    "contact_data_company_idx",
}


def later(*args: str, timeout: float = 300) -> str:
    """``manage.py <args>`` run by the later release; its output (it must succeed)."""
    result = manage(*args, env=later_env(), timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def columns(schema: str, table: str) -> set[str]:
    return {
        name
        for (name,) in rows(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) "
            "AND attnum > 0 AND NOT attisdropped",
            [schema, table],
        )
    }


def indexes(schema: str, table: str) -> set[str]:
    return {
        name
        for (name,) in rows(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s", [schema, table]
        )
    }


def recorded(schema: str) -> list[tuple[Any, ...]]:
    return rows(sql.SQL("SELECT app, name FROM {} ORDER BY id").format(sql.Identifier(schema, "django_migrations")))


def rows_where(schema: str, table: str, condition: str) -> int:
    # ``condition``: a constant of this module's tests, never outside input
    return int(
        value(sql.SQL("SELECT count(*) FROM {} WHERE ").format(sql.Identifier(schema, table)) + sql.SQL(condition))
    )


@pytest.mark.long
def test_a_later_release_runs_data_sync_verify_and_rollback_with_its_migration_in_some_schemas(
    schemas_ready: dict[str, Any],
) -> None:
    """The release that ships the new fields runs the phases after phase 2 while its migration is applied in
    the shared auth schema and one tenant only: it copies what each schema has, fills the new NOT NULL columns
    with the fields' defaults, and its verify names the tenant its ORM cannot use; the deploy that would reach
    that tenant during the online window is refused whole."""
    acme, globex = "tenant_acme_0001", "tenant_globex_0002"
    later("migrate_schemas", "--shared")
    later("migrate_schemas", "--schema", acme)
    assert "timezone" in columns("auth", "users")
    assert {"channel", "priority"} <= columns(acme, CONTACTS)
    assert "channel" not in columns(globex, CONTACTS)
    connection.close()

    later("migrate_phase", "data", "--online", "--noinput")

    users = count("auth", "users")
    assert users > 0
    assert rows_where("auth", "users", "timezone = 'UTC'") == users
    assert count(acme, CONTACTS) == count(acme, "contacts") == 120
    assert rows_where(acme, CONTACTS, "channel = 'email' AND priority = 5") == 120
    assert count(globex, CONTACTS) == count(globex, "contacts") == 120
    assert indexes(acme, CONTACTS) == LATER_INDEXES  # rebuilt as 0003 left them
    assert not DeferredConstraint.objects.exists()

    # Writes to the legacy tables meanwhile: sync applies them into the new columns' defaults.
    with psycopg_connect() as conn:
        conn.execute(
            "INSERT INTO salesflow_auth.users (email, password_hash, created_at) "
            "VALUES ('later@example.com', 'x', now())"
        )
        conn.execute(
            sql.SQL("INSERT INTO {} (first_name, created_at) VALUES ('Synced', now())").format(
                sql.Identifier(acme, "contacts")
            )
        )
    later("migrate_phase", "sync", "--noinput")
    assert rows_where("auth", "users", "email = 'later@example.com' AND timezone = 'UTC'") == 1
    assert rows_where(acme, CONTACTS, "first_name = 'Synced' AND channel = 'email' AND priority = 5") == 1

    later("migrate_phase", "security", "--noinput")
    # the load test shortened: what is checked is the tenant the release's ORM cannot use
    refused = manage("migrate_phase", "verify", "--noinput", *QUICK_LOAD_ARGUMENTS, env=later_env(), timeout=300)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert (
        f"{globex}.{CONTACTS} lacks the column(s) channel, priority of this release's model: the release's migrations "
        "are not applied there; run migrate_schemas, then verify again"
    ) in refused.stdout + refused.stderr

    # The deploy reaching the other tenants now would add a NOT NULL column without a database default to
    # tables in two-way sync (the old application's inserts could not fill it): refused whole, in one line.
    deploy = manage("migrate_schemas", "--noinput", env=later_env(), timeout=300)
    assert deploy.returncode == 1
    assert "Traceback" not in deploy.stderr
    assert "column channel added NOT NULL without a database default" in deploy.stdout + deploy.stderr
    assert "channel" not in columns(globex, CONTACTS)  # nothing of it applied
    assert ("contact_data", "0002_contact_channel") not in recorded(globex)

    # Rollback (before finalize) keeps every write; the filled defaults are no value lost.
    later("migrate_phase", "rollback", "--noinput")
    for schema in (acme, globex):
        assert count(schema, "contacts") == 120 + (schema == acme)
    assert value("SELECT count(*) FROM public.tenants WHERE migration_state <> 'ROLLED_BACK'") == 0


def test_a_column_deployed_before_phase_3_that_this_release_cannot_fill_refuses_its_table_in_one_line(
    schemas_ready: dict[str, Any],
) -> None:
    """A deploy of the later release before phase 3; this release's models lack its fields. The NOT NULL
    columns without database default are refused by name before anything is written or dropped; the later
    release copies them; this release's verify says why its ORM cannot insert, the later one's passes."""
    later("migrate_schemas")
    connection.close()

    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "data", interactive=False)
    message = str(refused.value)
    assert one_line(message)
    assert (
        "auth.users.timezone is NOT NULL without a database default, the legacy table salesflow_auth.users has no "
        "such column, and this release's model gives it no default; nothing was written to it"
    ) in message
    assert count("auth", "users") == 0

    # What the refusal advises: a database default. The auth copies then take it; the tenants' contacts
    # are refused the same way, before their copy dropped any index.
    with psycopg_connect() as conn:
        conn.execute("ALTER TABLE auth.users ALTER COLUMN timezone SET DEFAULT 'Europe/Paris'")
    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "data", interactive=False)
    assert one_line(str(refused.value))
    assert rows_where("auth", "users", "timezone = 'Europe/Paris'") == count("auth", "users") > 0
    failed = MigrationRecord.objects.latest_attempts().filter(step="copy_table", status=Status.FAILED)
    assert sorted(r.tenant_id for r in failed) == ["acme_0001", "empty_0001", "globex_0002"]
    for record in failed:
        assert record.error_message.startswith(
            f"tenant_{record.tenant_id}.{CONTACTS}.channel is NOT NULL without a database default, the legacy table "
            f"tenant_{record.tenant_id}.contacts has no such column"
        )
    assert count("tenant_acme_0001", CONTACTS) == 0
    assert not DeferredConstraint.objects.exists()  # refused before the copy dropped anything
    assert indexes("tenant_acme_0001", CONTACTS) == LATER_INDEXES

    later("migrate_phase", "data", "--noinput")  # the release that knows the fields fills them
    assert rows_where("tenant_acme_0001", CONTACTS, "channel = 'email' AND priority = 5") == 120
    connection.close()

    run("migrate_phase", "security", interactive=False)
    with pytest.raises(CommandError):
        run("migrate_phase", "verify", interactive=False)
    smoke = MigrationRecord.objects.filter(phase="verify", status=Status.FAILED).order_by("id").first()
    assert smoke is not None
    assert (
        f"{CONTACTS}.channel: NOT NULL without a database default and unknown to this release's model, so its "
        "inserts fail: run verify from the release whose migration added the column"
    ) in smoke.error_message
    later("migrate_phase", "verify", "--noinput")  # CRUD smoke and load test included
    assert not MigrationRecord.objects.latest_attempts().filter(phase="verify").exclude(status=Status.COMPLETED)


def test_a_deploy_during_the_copy_waits_for_the_tenant_being_copied_and_its_indexes_end_as_migrated(
    larger_schemas_ready: dict[str, int],
) -> None:
    """A deploy started while a tenant's contacts are copied without their indexes (the copy held between
    two batches) waits for that tenant, then runs while the phase waits: the copied tenant's rebuilt
    indexes are then removed, renamed and added by the deploy, the next tenant is copied as the deploy
    left it. This release cannot fill the new NOT NULL column there: refused in one line; the later
    release finishes it. Catalog and ``django_migrations`` agree in both tenants."""
    first, second = "tenant_acme_0001", "tenant_globex_0002"
    data = start_manage("migrate_phase", "data", "--batch-size", "200", "--noinput", "--jobs", "1")
    deploy = None
    with psycopg_connect() as watcher, psycopg_connect() as blocker:
        try:

            def contacts_partly_copied() -> bool:
                assert data.poll() is None, data.communicate()
                return bool(
                    watcher.execute(
                        "SELECT EXISTS (SELECT 1 FROM public.schema_migrations WHERE step = 'copy_table' "
                        "AND target = %s AND status = 'RUNNING' AND rows_copied > 0 "
                        "AND rows_copied < rows_expected / 2)",
                        [CONTACTS],
                    ).fetchone()[0]
                )

            wait_for(contacts_partly_copied, timeout=60, interval=0.002, what="a copy of contacts under way")
            copying = watcher.execute(
                "SELECT tenant_id FROM public.schema_migrations WHERE step = 'copy_table' AND status = 'RUNNING'"
            ).fetchone()[0]
            assert f"tenant_{copying}" == first
            blocker.autocommit = False
            blocker.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(first, CONTACTS)))
            assert indexes(first, CONTACTS) == {"contact_data_contacts_pkey"}  # the others dropped for the load

            # The tenant schemas' part of a deploy (its public part takes the lock on its own, before).
            deploy = start_manage(
                "migrate_schemas", "--tenant", "--noinput", env=later_env(SALESFLOW_DEPLOY_LOCK_TIMEOUT="120")
            )

            def deploy_waits_for_the_schema_lock() -> bool:
                assert deploy is not None
                assert deploy.poll() is None, deploy.communicate()
                return bool(
                    watcher.execute(
                        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND wait_event = 'advisory')"
                    ).fetchone()[0]
                )

            wait_for(deploy_waits_for_the_schema_lock, timeout=60, what="the deploy to wait for the copy")
            blocker.rollback()
            deploy_out, deploy_err = deploy.communicate(timeout=180)
            data_out, data_err = data.communicate(timeout=180)
        finally:
            for child in (data, deploy):
                if child is not None and child.poll() is None:
                    child.kill()
                    child.wait()

    assert deploy.returncode == 0, deploy_out + deploy_err
    assert "waiting up to 120 s for migrate_phase data" in deploy_out
    # The second tenant's contacts met the deploy's NOT NULL column: refused in one line, nothing dropped.
    assert data.returncode == 1, deploy_out + data_out + data_err
    errors = [line for line in data_err.splitlines() if line.strip()]
    assert len(errors) == 1, data_err
    assert "Traceback" not in data_err
    assert f"{second}.{CONTACTS}.channel is NOT NULL without a database default" in errors[0]
    assert indexes(second, CONTACTS) == LATER_INDEXES
    # Not held back for the whole phase: the deploy ran between the two tenants' copies.
    deployed = value(
        sql.SQL("SELECT applied FROM {} WHERE app = 'contact_data' AND name = '0003_contact_indexes'").format(
            sql.Identifier(second, "django_migrations")
        )
    )
    copies = MigrationRecord.objects.filter(step="copy_table", target=CONTACTS)
    assert copies.get(tenant_id="acme_0001").completed_at < deployed < copies.get(tenant_id="globex_0002").started_at
    connection.close()

    later("migrate_phase", "data", "--noinput")

    for schema in (first, second):
        assert indexes(schema, CONTACTS) == LATER_INDEXES
        migrations = recorded(schema)
        assert all(migrations.count(m) == 1 for m in LATER_MIGRATIONS)
        assert count(schema, CONTACTS) == count(schema, "contacts") == 4_000
        assert rows_where(schema, CONTACTS, "channel = 'email' AND priority = 5") == 4_000
    assert not DeferredConstraint.objects.exists()
