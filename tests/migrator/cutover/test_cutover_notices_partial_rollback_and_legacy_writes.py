"""Rollback that stops half way, and legacy writes after phase 3: cutover must notice both.

Item 2: a rollback records each tenant's undoing with the drop itself, and cutover checks each
tenant's target tables against phase 3's validated fingerprints before it touches legacy tables.
Item 4: cutover re-validates the legacy side with legacy writes locked out, and refuses on changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management.base import CommandError
from django.db import connection
from psycopg import sql

from migrator import db
from migrator.config import get_config
from migrator.models import MigrationRecord, Status
from migrator.tables import LEGACY_AUTH_TABLES, LEGACY_TENANT_TABLES
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.helpers import (
    kill_while_it_waits_for_a_lock,
    manage_env,
    one_line,
    psycopg_connect,
    start_manage,
    table_names,
    wait_for,
    wait_for_killed_sessions_to_end,
)

FIRST, LAST = "acme_0001", "globex_0002"  # rollback undoes tenants in this order


def migrate_up_to_verify() -> None:
    """From the ``migrated`` stage (phases 1-3 done) to the point where cutover may run."""
    for phase in ("security", "verify"):
        run("migrate_phase", phase, interactive=False)


def legacy_tables_in_place(tenant_id: str) -> bool:
    return set(LEGACY_TENANT_TABLES) <= table_names(f"tenant_{tenant_id}")


def state(tenant_id: str) -> str:
    return Tenant.objects.get(tenant_id=tenant_id).migration_state


def status_check_passes() -> bool:
    try:
        run("migrate_phase", "status", check=True)
    except SystemExit as stop:  # --check exits 1 unless everything is complete
        return stop.code in (0, None)
    return True


def cutover_failures() -> list[str]:
    with pytest.raises(CommandError) as failure:
        run("migrate_phase", "cutover", interactive=False)
    assert one_line(str(failure.value))
    return [r.error_message for r in MigrationRecord.objects.filter(phase="cutover", status=Status.FAILED)]


def test_rollback_killed_half_way_marks_undone_tenants_and_cutover_leaves_them_alone(migrated):
    migrate_up_to_verify()
    blocked_table = f"tenant_{LAST}.contact_data_contacts"
    with psycopg_connect() as blocker, psycopg_connect() as watcher:
        ours = [
            r[0]
            for r in watcher.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()").fetchall()
        ]
        with blocker.transaction():
            # A reader in another session: the rollback's DROP TABLE of the last tenant waits for it.
            blocker.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                    sql.Identifier(f"tenant_{LAST}", "contact_data_contacts")
                )
            )
            kill_while_it_waits_for_a_lock(
                ["migrate_phase", "rollback", "--noinput"],
                watcher,
                f"the rollback to wait for {blocked_table}",
                ignore=ours,
            )
        wait_for_killed_sessions_to_end(watcher, ours)

    assert "contact_data_contacts" not in table_names(f"tenant_{FIRST}")  # undone before the kill
    assert "contact_data_contacts" in table_names(f"tenant_{LAST}")  # the kill came first
    # the undoing is on record with the drop, not left for a last step the kill never reached
    assert (
        not MigrationRecord.objects.filter(tenant_id=FIRST, phase__in=["data", "verify"])
        .latest_attempts()
        .exclude(status=Status.ROLLED_BACK)
        .exists()
    )
    assert not status_check_passes()

    # Its verification was undone with it: cutover does not start (one line naming the tenant's steps).
    with pytest.raises(
        CommandError, match=f"cutover cannot start: .*verify tenant_tables {FIRST} ROLLED_BACK"
    ) as refused:
        run("migrate_phase", "cutover", interactive=False)
    assert one_line(str(refused.value))
    assert legacy_tables_in_place(FIRST)
    assert state(FIRST) != MigrationState.LIVE
    assert not status_check_passes()


@pytest.fixture
def role_grant_in_another_database(migrated: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """A database of the same cluster where the contact service role holds a privilege."""
    other = f"{connection.settings_dict['NAME']}_other"
    with psycopg_connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
    try:
        yield other, get_config().service_roles["contact"]
    finally:
        with psycopg_connect() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other)))


def test_rollback_whose_drop_roles_fails_still_keeps_cutover_off_undone_tenants(
    migrated, role_grant_in_another_database
):
    other, role = role_grant_in_another_database
    migrate_up_to_verify()
    with psycopg_connect(other) as elsewhere:
        elsewhere.execute("CREATE TABLE shared_by_prefix (id int)")
        elsewhere.execute(sql.SQL("GRANT SELECT ON shared_by_prefix TO {}").format(sql.Identifier(role)))

    with pytest.raises(CommandError):
        run("migrate_phase", "rollback", interactive=False)
    assert MigrationRecord.objects.filter(phase="rollback", step="drop_roles", status=Status.FAILED).exists()
    assert not status_check_passes()

    cutover_failures()
    for tenant_id in migrated["tenants"]:
        assert legacy_tables_in_place(tenant_id), tenant_id
        assert state(tenant_id) != MigrationState.LIVE
    assert not status_check_passes()


def test_cutover_refuses_a_tenant_whose_target_table_is_gone(migrated):
    migrate_up_to_verify()
    db.execute(sql.SQL("DROP TABLE {} CASCADE").format(sql.Identifier(f"tenant_{FIRST}", "activity_data_activities")))

    failures = cutover_failures()
    assert any(f"tenant_{FIRST}.activity_data_activities" in error for error in failures), failures
    assert legacy_tables_in_place(FIRST)
    assert state(FIRST) != MigrationState.LIVE
    assert state(LAST) == MigrationState.LIVE  # a tenant whose tables are fine still goes live
    assert not status_check_passes()


def test_cutover_refuses_legacy_writes_made_after_phase_3(migrated):
    auth_schema = get_config().legacy_auth_schema
    migrate_up_to_verify()
    first, last = (sql.Identifier(f"tenant_{t}", "contacts") for t in (FIRST, LAST))
    # insert a contact, update an email, delete an activity, add an auth user
    db.execute(
        sql.SQL("INSERT INTO {} (first_name, email, created_at) VALUES ('Late', 'late@example.com', now())").format(
            first
        )
    )
    db.execute(
        sql.SQL("UPDATE {t} SET email = 'changed@example.com' WHERE id = (SELECT min(id) FROM {t})").format(t=last)
    )
    db.execute(
        sql.SQL("DELETE FROM {t} WHERE id = (SELECT min(id) FROM {t})").format(
            t=sql.Identifier(f"tenant_{FIRST}", "activities")
        )
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} (email, password_hash, created_at) VALUES ('late@salesflow.example', 'x', now())"
        ).format(sql.Identifier(auth_schema, "users"))
    )

    failures = cutover_failures()
    (first_error,) = [e for e in failures if FIRST in e]
    assert f"tenant_{FIRST}.contacts: 120 rows validated, 121 now" in first_error
    assert f"tenant_{FIRST}.activities: 240 rows validated, 239 now" in first_error
    (last_error,) = [e for e in failures if LAST in e]
    assert f"tenant_{LAST}.contacts: 120 rows validated, 120 now, content changed" in last_error
    for tenant_id in (FIRST, LAST):
        assert legacy_tables_in_place(tenant_id)
        assert state(tenant_id) != MigrationState.LIVE
    assert set(LEGACY_AUTH_TABLES) <= table_names(auth_schema)
    assert not status_check_passes()


def test_cutover_refuses_an_auth_user_added_after_phase_3(migrated):
    auth_schema = get_config().legacy_auth_schema
    migrate_up_to_verify()
    db.execute(
        sql.SQL(
            "INSERT INTO {} (email, password_hash, created_at) VALUES ('late@salesflow.example', 'x', now())"
        ).format(sql.Identifier(auth_schema, "users"))
    )

    failures = cutover_failures()
    (error,) = failures
    assert f"{auth_schema}.users: " in error
    assert "rows validated" in error
    assert set(LEGACY_AUTH_TABLES) <= table_names(auth_schema)
    assert not status_check_passes()


def test_cutover_waits_for_a_legacy_write_in_flight_and_then_refuses_it(migrated):
    migrate_up_to_verify()
    with psycopg_connect() as writer, psycopg_connect() as watcher:
        ours = [
            r[0]
            for r in watcher.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()").fetchall()
        ]
        with writer.transaction():
            writer.execute(
                sql.SQL("INSERT INTO {} (first_name, created_at) VALUES ('In flight', now())").format(
                    sql.Identifier(f"tenant_{FIRST}", "contacts")
                )
            )
            child = start_manage(
                "migrate_phase",
                "cutover",
                "--tenant",
                FIRST,
                "--noinput",
                env=manage_env(SALESFLOW_ROLE_PREFIX=get_config().role_prefix),
            )
            try:
                # the cutover must wait for the write before it reads the legacy side
                wait_for(
                    lambda: (
                        child.poll() is None
                        and watcher.execute(
                            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> ALL(%s) "
                            "AND wait_event_type = 'Lock'",
                            [ours],
                        ).fetchone()
                    ),
                    timeout=60,
                    what="the cutover to wait for the legacy write",
                )
            except BaseException:
                child.kill()
                raise
        _out, err = child.communicate(timeout=120)  # the write commits as the transaction block ends
    assert child.returncode != 0, err
    assert one_line(err.strip().splitlines()[-1])
    assert legacy_tables_in_place(FIRST)
    assert state(FIRST) != MigrationState.LIVE
    error = MigrationRecord.objects.get(phase="cutover", step="archive_legacy", tenant_id=FIRST).error_message
    assert f"tenant_{FIRST}.contacts: 120 rows validated, 121 now" in error


def test_cutover_killed_after_a_tenants_move_committed_is_finished_by_a_rerun(migrated):
    migrate_up_to_verify()
    tenants_table = sql.Identifier("public", "tenants")
    with psycopg_connect() as blocker, psycopg_connect() as watcher:
        ours = [
            r[0]
            for r in watcher.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()").fetchall()
        ]
        with blocker.transaction():
            # The tenant's row locked in another session: its move commits, then the record of the step
            # (written with the tenant's new state) waits here, and the kill lands in between.
            blocker.execute(sql.SQL("SELECT 1 FROM {} WHERE tenant_id = %s FOR UPDATE").format(tenants_table), [FIRST])
            kill_while_it_waits_for_a_lock(
                ["migrate_phase", "cutover", "--noinput", "--tenant", FIRST],
                watcher,
                "the cutover's record to wait for the tenant's row",
                ignore=ours,
                terminate_the_waiting_session=True,
            )
        wait_for_killed_sessions_to_end(watcher, ours)

    archive_schema = get_config().archive_schema
    assert not legacy_tables_in_place(FIRST)  # the move committed before the kill
    assert {f"{FIRST}__{t}" for t in LEGACY_TENANT_TABLES} <= table_names(archive_schema)
    assert state(FIRST) != MigrationState.LIVE  # ... its record and the tenant's state did not

    out = run("migrate_phase", "cutover", interactive=False, tenant=[FIRST])

    assert "already archived" in out
    assert state(FIRST) == MigrationState.LIVE
    step = MigrationRecord.objects.filter(phase="cutover", tenant_id=FIRST).latest_attempts().get()
    assert step.status == Status.COMPLETED
    assert step.details["archived"] == {t: f"{archive_schema}.{FIRST}__{t}" for t in LEGACY_TENANT_TABLES}
    assert legacy_tables_in_place(LAST)  # not selected, untouched
    assert state(LAST) != MigrationState.LIVE


def test_cutover_refuses_a_reference_row_renamed_after_phase_3(migrated):
    migrate_up_to_verify()
    # the shared row keeps the name merged in phase 3: archiving the legacy row would lose the new one
    db.execute(
        sql.SQL("UPDATE {} SET name = 'Hot lead' WHERE id = (SELECT min(id) FROM {})").format(
            sql.Identifier(f"tenant_{FIRST}", "contact_types"), sql.Identifier(f"tenant_{FIRST}", "contact_types")
        )
    )

    failures = cutover_failures()

    (error,) = [e for e in failures if FIRST in e]
    assert f"tenant_{FIRST}.contact_types: 1 rows changed since phase 3" in error
    assert legacy_tables_in_place(FIRST)
    assert state(FIRST) != MigrationState.LIVE
    assert state(LAST) == MigrationState.LIVE  # its reference rows are as merged
    assert not status_check_passes()


def test_validating_live_tenants_again_is_refused_and_leaves_the_migration_complete(migrated):
    migrate_up_to_verify()
    run("migrate_phase", "cutover", interactive=False)
    assert status_check_passes()
    recorded = MigrationRecord.objects.count()

    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "data", "--validate-only", interactive=False)

    assert one_line(str(refused.value))
    assert f"tenant {FIRST} is live" in str(refused.value)
    assert MigrationRecord.objects.count() == recorded  # nothing planned, nothing recorded
    assert status_check_passes()
    run("migrate_phase", "data", interactive=False)  # a plain rerun: nothing to do
    assert status_check_passes()


def test_a_tenant_cutover_refused_is_rolled_back_alone_while_others_are_live_and_migrated_again(migrated):
    migrate_up_to_verify()
    db.execute(
        sql.SQL("INSERT INTO {} (first_name, created_at) VALUES ('Late', now())").format(
            sql.Identifier(f"tenant_{FIRST}", "contacts")
        )
    )
    (refused,) = cutover_failures()  # FIRST refused (a write since phase 3), LAST live
    assert state(LAST) == MigrationState.LIVE
    # the remedy the refusal names (a plain rollback is refused while another tenant is live)
    assert (
        f"roll it back with `migrate_phase rollback --tenant {FIRST}`, run phases schemas, data, security and "
        f"verify with --tenant {FIRST} again, then `migrate_phase cutover`" in refused
    )

    # ... followed: the tenant rolled back alone, phases 2-5 for it again, then cutover
    run("migrate_phase", "rollback", "--tenant", FIRST, interactive=False)
    assert legacy_tables_in_place(FIRST)
    for phase in ("schemas", "data", "security", "verify"):
        run("migrate_phase", phase, "--tenant", FIRST, interactive=False)
    run("migrate_phase", "cutover", interactive=False)  # the tenant, then the phase-wide steps it held back

    assert state(FIRST) == MigrationState.LIVE
    assert (
        db.fetchvalue(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"tenant_{FIRST}", "contact_data_contacts"))
        )
        == 121
    )
    assert status_check_passes()


def test_a_reference_table_of_another_column_type_is_compared_as_merged_and_cut_over(schemas_ready):
    # a legacy char(n): its values are padded, the shared text column holds them as the merge cast them
    db.execute(
        sql.SQL("ALTER TABLE {} ALTER COLUMN name TYPE char(40)").format(
            sql.Identifier(f"tenant_{FIRST}", "contact_types")
        )
    )
    for phase in ("data", "security", "verify", "cutover"):
        run("migrate_phase", phase, interactive=False)

    assert state(FIRST) == MigrationState.LIVE
