"""The phase engine through ``migrate_phase``: tracking rows, reruns, --plan, --check, the lock, --jobs, retries."""

from __future__ import annotations

import json
import os
import socket
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from psycopg import sql

from migrator import db
from migrator.django_migrations import TRACKING_APPS, all_recorded, unapplied
from migrator.engine.lock import MigratorLock
from migrator.models import MigrationRecord, Status
from migrator.phases import ORDERED
from migrator.tables import LEGACY_TENANT_TABLES
from tenants.models import MigrationState, Tenant
from tests.helpers import legacy_fingerprints, run
from tests.migrator.helpers import (
    all_table_fingerprints,
    attempts,
    catalog_snapshot,
    count,
    latest,
    manage,
    one_line,
    records,
    table_names,
)

TENANTS = ["acme_0001", "empty_0001", "globex_0002"]


def database_state() -> tuple[set[tuple[str, str, str]], dict[str, tuple[int, str]], int]:
    return catalog_snapshot(), all_table_fingerprints(), MigrationRecord.objects.count()


def test_phases_one_and_two_end_to_end(seeded):
    legacy_before = legacy_fingerprints(TENANTS)

    out = run("migrate_phase", "1", interactive=False)

    assert "Phase prepare: 8 steps OK, 0 failed" in out
    assert sorted(Tenant.objects.values_list("tenant_id", "schema_name", "migration_state")) == [
        (t, f"tenant_{t}", MigrationState.REGISTERED) for t in TENANTS
    ]
    prepare_rows = records(phase="prepare")
    assert [r.step for r in prepare_rows] == [
        "preflight",
        "bootstrap",
        "backup",
        "inspect_auth",
        "discover",
        "register",
        "register",
        "register",
    ]
    for row in prepare_rows:
        assert (row.status, row.attempt, row.error_message, row.phase_number) == (Status.COMPLETED, 1, None, 1)
        assert row.started_at <= row.completed_at
        assert row.duration is not None
        assert row.host == socket.gethostname()
        assert row.pid == os.getpid()
    register = latest("prepare/acme_0001/register/tenant_acme_0001")
    assert register.tenant_id == "acme_0001"
    # every row of every legacy table of the tenant (120 contacts + 240 activities + 8 reference rows today)
    assert register.rows_expected == sum(count("tenant_acme_0001", table) for table in LEGACY_TENANT_TABLES)
    assert register.details["inspection"]["tables"]["contacts"] == {"rows": 120, "columns": 11}

    out = run("migrate_phase", "schemas", interactive=False)

    assert "Phase schemas: 4 steps OK, 0 failed" in out
    for tenant in TENANTS:
        assert {"contact_data_contacts", "activity_data_activities"} <= table_names(f"tenant_{tenant}")
        assert latest(f"schemas/{tenant}/tenant_tables/tenant_{tenant}").status == Status.COMPLETED
    assert set(Tenant.objects.values_list("migration_state", flat=True)) == {MigrationState.SCHEMAS_READY}
    assert legacy_fingerprints(TENANTS) == legacy_before  # phases 1 and 2 leave the legacy data alone


def test_rerun_is_a_no_op(schemas_ready):
    before = list(MigrationRecord.objects.order_by("id").values_list("id", "status", "attempt"))
    tables_before = catalog_snapshot()

    for phase in ("prepare", "schemas"):
        out = run("migrate_phase", phase, interactive=False)
        assert f"Phase {phase}: 0 steps to run" in out
        assert f"Phase {phase}: 0 steps OK, 0 failed" in out

    assert list(MigrationRecord.objects.order_by("id").values_list("id", "status", "attempt")) == before
    assert catalog_snapshot() == tables_before


def test_a_rerun_picks_up_a_tenant_schema_that_appeared_since(prepared):
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier("tenant_latecomer")))

    with pytest.raises(SystemExit) as exit_info:
        run("migrate_phase", "prepare", check=True)
    assert exit_info.value.code == 1

    out = run("migrate_phase", "prepare", interactive=False)

    assert "Phase prepare: 1 steps to run" in out  # only the new tenant
    assert "[latecomer] register tenant_latecomer ... OK no legacy tables; missing: contact_types" in out
    assert Tenant.objects.get(tenant_id="latecomer").migration_state == MigrationState.REGISTERED
    assert len(attempts("prepare/acme_0001/register/tenant_acme_0001")) == 1


@pytest.mark.parametrize("stage", ["seeded", "prepared", "schemas_ready", "migrated"])
def test_plan_changes_nothing(stage, request, stage_db):
    request.getfixturevalue(stage)
    before = database_state()

    outputs = {phase: run("migrate_phase", phase, plan=True) for phase in ("prepare", "schemas", "data")}

    assert database_state() == before
    if stage == "seeded":
        assert "Phase 1 prepare: 8 steps to run" in outputs["prepare"]
        assert "[acme_0001] register tenant_acme_0001: Inspect tenant_acme_0001 and register" in outputs["prepare"]
    if stage == "prepared":
        assert 'CREATE TABLE "contact_data_contacts"' in outputs["schemas"]
        assert "[globex_0002] tenant_tables tenant_globex_0002" in outputs["schemas"]
    if stage == "schemas_ready":
        assert 'INSERT INTO "tenant_acme_0001"."contact_data_contacts"' in outputs["data"]
        assert "hash_record_extended" in outputs["data"]
    if stage == "migrated":
        assert all("0 steps to run" in out for out in outputs.values())


def test_plan_in_json_lists_steps_with_their_sql(prepared):
    plan = json.loads(run("migrate_phase", "schemas", plan=True, format="json"))

    assert plan["pending"] == 4
    steps = {s["migration_id"]: s for s in plan["phases"][0]["steps"]}
    assert set(steps) == {"schemas/*/service_schemas"} | {f"schemas/{t}/tenant_tables/tenant_{t}" for t in TENANTS}
    assert any(
        s.startswith('CREATE TABLE "activity_data_activities"')
        for s in steps["schemas/acme_0001/tenant_tables/tenant_acme_0001"]["sql"]
    )


def test_check_exits_1_while_steps_are_pending_and_0_when_done(prepared):
    with pytest.raises(SystemExit) as exit_info:
        run("migrate_phase", "schemas", check=True)
    assert exit_info.value.code == 1
    assert not records(phase="schemas")  # checking records nothing

    run("migrate_phase", "schemas", interactive=False)

    assert "Nothing to do." in run("migrate_phase", "schemas", check=True)
    assert "Nothing to do." in run("migrate_phase", "prepare", check=True)


def test_status_check_is_the_deploy_gate(prepared):
    report = json.loads(run("migrate_phase", "status", format="json"))
    assert report["complete"] is False
    assert report["tenants"]["acme_0001"]["prepare"] == "done"
    assert report["tenants"]["acme_0001"]["schemas"] == "pending"
    with pytest.raises(SystemExit) as exit_info:
        run("migrate_phase", "status", check=True)
    assert exit_info.value.code == 1


def test_the_lock_refuses_a_second_runner_and_says_who_holds_it(seeded):
    with MigratorLock("data"):
        started = time.monotonic()
        with pytest.raises(CommandError) as exc:
            run("migrate_phase", "prepare", interactive=False)
        assert time.monotonic() - started < 5  # refused at once, not after waiting
        message = str(exc.value)
        assert one_line(message)
        assert message.startswith(
            "another migration is running on this database: migrate_phase data on "
            f"{socket.gethostname()} pid {os.getpid()} (server pid "
        )
        assert " since 20" in message

        child = manage("migrate_phase", "prepare", "--noinput")
        assert child.returncode == 1
        assert child.stderr.count("\n") == 1
        assert "Traceback" not in child.stderr
        assert f"migrate_phase data on {socket.gethostname()} pid {os.getpid()}" in child.stderr

    assert not records(phase="prepare")  # nothing ran while the lock was held
    run("migrate_phase", "prepare", interactive=False)  # released: the next runner gets it
    assert records(phase="prepare", status=Status.COMPLETED)


def test_the_lock_holder_of_migrate_phase_all_is_named_with_its_host_and_pid(seeded):
    every_phase = "+".join(phase.name for phase in ORDERED)  # what `migrate_phase all` holds the lock as
    with MigratorLock(every_phase), pytest.raises(CommandError) as exc:
        run("migrate_phase", "prepare", interactive=False)
    message = str(exc.value)
    assert f" on {socket.gethostname()} pid {os.getpid()} (server pid " in message
    assert "migrate_phase prepare.." in message  # the phases, shortened to fit PostgreSQL's application_name


def test_jobs_one_failing_tenant_does_not_stop_the_others(prepared):
    # globex's schema already has a table of that name: its migration must fail
    db.execute("CREATE TABLE tenant_globex_0002.contact_data_contacts (x int)")

    out = StringIO()
    with pytest.raises(CommandError) as exc:
        call_command("migrate_phase", "schemas", interactive=False, jobs=2, stdout=out)

    assert "Phase schemas: 3 steps OK, 1 failed in " in out.getvalue()  # the summary
    assert "[globex_0002] tenant_tables tenant_globex_0002 ... FAILED: database error: relation" in out.getvalue()
    message = str(exc.value)
    assert one_line(message)
    assert message.startswith(
        "phase schemas failed: 1 step(s) failed, first [globex_0002] tenant_tables "
        'tenant_globex_0002: database error: relation "contact_data_contacts" already exists'
    )
    failed = latest("schemas/globex_0002/tenant_tables/tenant_globex_0002")
    assert (failed.status, failed.attempt) == (Status.FAILED, 1)
    assert 'relation "contact_data_contacts" already exists' in failed.error_message
    for tenant in ("acme_0001", "empty_0001"):
        assert latest(f"schemas/{tenant}/tenant_tables/tenant_{tenant}").status == Status.COMPLETED
        assert "activity_data_activities" in table_names(f"tenant_{tenant}")
    assert dict(Tenant.objects.values_list("tenant_id", "migration_state")) == {
        "acme_0001": MigrationState.SCHEMAS_READY,
        "empty_0001": MigrationState.SCHEMAS_READY,
        "globex_0002": MigrationState.FAILED,
    }

    # the operator fixes the cause; the rerun retries only the failed step, as a new attempt
    db.execute("DROP TABLE tenant_globex_0002.contact_data_contacts")
    out = run("migrate_phase", "schemas", interactive=False, jobs=2)

    assert "Phase schemas: 1 steps to run" in out
    history = attempts("schemas/globex_0002/tenant_tables/tenant_globex_0002")
    assert [(r.attempt, r.status) for r in history] == [(1, Status.FAILED), (2, Status.COMPLETED)]
    assert "already exists" in history[0].error_message  # the failure's history is kept
    assert history[1].error_message is None
    assert len(attempts("schemas/acme_0001/tenant_tables/tenant_acme_0001")) == 1
    assert Tenant.objects.get(tenant_id="globex_0002").migration_state == MigrationState.SCHEMAS_READY


def test_json_output_of_a_run(prepared):
    result = json.loads(run("migrate_phase", "schemas", interactive=False, format="json"))

    assert result["ok"] is True
    completed = {c["migration_id"] for c in result["phases"][0]["completed"]}
    assert completed == {r.migration_id for r in records(phase="schemas", status=Status.COMPLETED)}
    assert len(completed) == 4
    assert result["phases"][0]["failed"] == []


def test_stale_running_rows_are_closed_as_interrupted(prepared):
    now = timezone.now()
    stale = MigrationRecord.objects.create(
        migration_id="schemas/*/service_schemas",
        phase="schemas",
        phase_number=2,
        step="service_schemas",
        status=Status.RUNNING,
        attempt=1,
        started_at=now,
        host="crashed-host",
        pid=999999,
    )

    run("migrate_phase", "schemas", interactive=False)

    stale.refresh_from_db()
    assert stale.status == Status.FAILED
    assert stale.error_message.startswith("interrupted: the process running this step ended before it finished")
    assert stale.completed_at is not None
    assert (stale.host, stale.pid) == ("crashed-host", 999999)
    retry = latest("schemas/*/service_schemas")
    assert (retry.attempt, retry.status) == (2, Status.COMPLETED)
    assert not MigrationRecord.objects.filter(status=Status.RUNNING).exists()


def test_a_public_schema_with_every_tracking_migration_recorded_is_told_without_the_migration_graph(prepared):
    assert all_recorded("public", TRACKING_APPS)
    db.execute("DELETE FROM public.django_migrations WHERE app = 'migrator' AND name = '0003_driftfinding'")

    assert not all_recorded("public", TRACKING_APPS)  # then the migration graph decides
    assert unapplied("public", TRACKING_APPS) == ["migrator.0003_driftfinding"]
