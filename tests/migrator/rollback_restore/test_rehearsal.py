"""`migrate_phase rehearse`: phases 1-6 on a scratch copy of the phase-1 backup; the real database keeps
everything but one tracking record holding the report."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from django.core.management.base import CommandError
from django.db import connection
from psycopg import sql

from migrator import catalog, db
from migrator.config import get_config
from migrator.core.errors import MigrationError
from migrator.models import MigrationRecord, Status
from migrator.ops import databases, rehearsal
from migrator.phases import ORDERED
from migrator.phases.rehearse import rehearsed_phases
from migrator.tables import TENANT_DATA_TABLES
from tests.helpers import run
from tests.migrator.helpers import (
    catalog_snapshot,
    kill_when,
    manage_env,
    one_line,
    psycopg_connect,
)

LOAD = {"load_seconds": 0.5, "load_queries": 20}


def scratch_name() -> str:
    return f"{connection.settings_dict['NAME']}_rehearsal"


def database_exists(name: str) -> bool:
    return bool(db.fetchvalue("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %s)", [name]))


def rehearsal_roles() -> list[str]:
    prefix = rehearsal.rehearsal_role_prefix(get_config())
    return [r[0] for r in db.fetchall("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [prefix + "%"])]


def tracking_rows() -> list[tuple[Any, ...]]:
    return list(MigrationRecord.objects.order_by("id").values_list("id", "migration_id", "attempt", "status"))


@pytest.fixture
def no_scratch() -> Any:
    """Whatever a failing test leaves, the next one starts without a scratch database or rehearsal roles."""
    yield
    with rehearsal.server_connection() as conn:
        databases.drop_database(conn, scratch_name())
        for role in rehearsal_roles():
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    rehearsal.journal_path(get_config()).unlink(missing_ok=True)


def test_rehearse_reports_every_phase_and_leaves_the_real_database_as_it_was(prepared, no_scratch):
    before, history = catalog_snapshot(), tracking_rows()

    out = run("migrate_phase", "rehearse", interactive=False, format="json", jobs=2, **LOAD)

    report = json.loads(out)
    assert report["ok"], report
    assert [p["phase"] for p in report["phases"]] == [p.name for p in rehearsed_phases()]
    assert all(p["ok"] and p["seconds"] > 0 and not p["failed"] for p in report["phases"])
    # every tenant-data row (2 tenants of 120 contacts and 240 activities today)
    tenant_rows = sum(
        catalog.row_count(f"tenant_{t}", e.legacy_table) for t in prepared["tenants"] for e in TENANT_DATA_TABLES
    )
    assert tenant_rows >= 2 * (120 + 240)
    data = next(p for p in report["phases"] if p["phase"] == "data")
    assert data["rows_moved"] >= tenant_rows
    assert data["rows_per_second"] > 0
    assert report["rehearsed_volume"] == report["live_volume"] == {"tenants": 3, "rows": tenant_rows}
    projection = report["projection"]
    assert [p["phase"] for p in projection["phases"]] == [p.name for p in rehearsed_phases()]
    assert 0 < projection["total_low_seconds"] <= projection["total_high_seconds"]
    assert projection["assumptions"]

    assert catalog_snapshot() == before  # every schema, table, index and sequence of the real database
    new = [row for row in tracking_rows() if row not in history]
    assert len(tracking_rows()) == len(history) + 1
    assert len(new) == 1
    record = MigrationRecord.objects.get(pk=new[0][0])
    assert (record.phase, record.step, record.status) == ("rehearse", "rehearsal", Status.COMPLETED)
    assert record.details["rehearsal"]["phases"] == report["phases"]
    assert not database_exists(scratch_name())
    assert not rehearsal_roles()
    assert not rehearsal.journal_path(get_config()).exists()


def test_a_legacy_problem_fails_its_phase_in_the_report_only(seeded, no_scratch):
    # A contact type id that points at nothing: phase 1 reports no drift, phase 3 refuses the rows.
    db.execute(
        "ALTER TABLE tenant_acme_0001.contacts DROP CONSTRAINT contacts_contact_type_id_fkey; "
        "UPDATE tenant_acme_0001.contacts SET contact_type_id = 999999 WHERE id = 1"
    )
    run("migrate_phase", "prepare", interactive=False)
    before, history = catalog_snapshot(), tracking_rows()

    with pytest.raises(CommandError) as failure:
        run("migrate_phase", "rehearse", interactive=False, **LOAD)

    message = str(failure.value)
    assert one_line(message)
    assert "phase data" in message
    assert "point at no row of tenant_acme_0001.contact_types" in message
    assert catalog_snapshot() == before
    assert len(tracking_rows()) == len(history) + 1
    report = MigrationRecord.objects.get(phase="rehearse").details["rehearsal"]
    assert not report["ok"]
    rehearsed = [p.name for p in ORDERED]  # the rehearsal runs the ordered phases, a new one too
    assert [p["phase"] for p in report["phases"]] == rehearsed[: rehearsed.index("data") + 1]
    assert report["not_run"] == rehearsed[rehearsed.index("data") + 1 :]
    failed = report["phases"][-1]["failed"]
    assert failed
    assert any("999999" in f["error"] and "acme_0001" in f["step"] for f in failed)
    assert not database_exists(scratch_name())
    assert not rehearsal_roles()


def test_the_drift_decisions_of_the_run_are_the_scratch_runs(seeded, no_scratch):
    # Two findings phase 1 refuses to decide alone: an unknown table with rows, and a tenant left out.
    db.execute("CREATE TABLE tenant_acme_0001.notes_2019 (id int); INSERT INTO tenant_acme_0001.notes_2019 VALUES (7)")
    decisions = {"leave_table": ["*.notes_2019"], "skip_schema": ["tenant_globex_0002"]}
    run("migrate_phase", "prepare", interactive=False, **decisions)

    out = run("migrate_phase", "rehearse", interactive=False, format="json", keep=True, **decisions, **LOAD)

    report = json.loads(out)
    assert report["ok"], report
    assert [p["phase"] for p in report["phases"]] == [p.name for p in rehearsed_phases()]
    with psycopg_connect(scratch_name()) as scratch:
        states = dict(scratch.execute("SELECT tenant_id, migration_state FROM public.tenants").fetchall())
        assert states == {"acme_0001": "LIVE", "empty_0001": "LIVE", "globex_0002": "EXCLUDED"}
        assert scratch.execute("SELECT id FROM tenant_acme_0001.notes_2019").fetchall() == [(7,)]
        assert scratch.execute("SELECT count(*) FROM tenant_globex_0002.contacts").fetchone() == (120,)


def test_rehearse_needs_a_phase_one_backup(seeded, no_scratch):
    with pytest.raises(CommandError) as failure:
        run("migrate_phase", "rehearse", interactive=False)
    assert one_line(str(failure.value))
    assert "migrate_phase prepare" in str(failure.value)
    assert not database_exists(scratch_name())


def test_an_unrelated_database_of_that_name_is_refused_unless_replace(prepared, no_scratch):
    with rehearsal.server_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch_name())))
    with pytest.raises(CommandError) as failure:
        run("migrate_phase", "rehearse", interactive=False, **LOAD)
    assert one_line(str(failure.value))
    assert "--replace" in str(failure.value)
    assert database_exists(scratch_name())

    run("migrate_phase", "rehearse", interactive=False, replace=True, keep=True, **LOAD)
    assert database_exists(scratch_name())  # kept for inspection, marked as a rehearsal copy
    with psycopg_connect(scratch_name()) as scratch:
        assert scratch.execute("SELECT count(*) FROM public.tenants").fetchone()[0] == 3
    assert rehearsal_roles()
    # Made like the real database: how text sorts and compares, and where its files go (the stages live in
    # the run's tablespace, not the server's default, unless SALESFLOW_TEST_TABLESPACE=0: tests/stages.py).
    assert database_properties(scratch_name()) == database_properties(connection.settings_dict["NAME"])


def test_a_user_who_may_not_create_in_the_databases_tablespace_is_told_in_one_line(seeded, no_scratch):
    source = connection.settings_dict
    tablespace = database_properties(source["NAME"])[3]
    if tablespace == "pg_default":  # where every user may create
        pytest.skip("needs the run's tablespace (SALESFLOW_TEST_TABLESPACE=0 keeps the stages in pg_default)")
    role = f"{get_config().role_prefix}_rehearser"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(role)))
    try:
        with psycopg.connect(
            dbname="postgres", user=role, host=source["HOST"] or None, port=source["PORT"] or None, autocommit=True
        ) as conn:
            oid = databases.database_oid(conn, source["NAME"])
            assert oid is not None
            with pytest.raises(MigrationError) as failure:
                databases.create_database_like(conn, scratch_name(), oid, same_owner=False)
    finally:
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert one_line(str(failure.value))
    assert f"CREATE on tablespace {tablespace}" in str(failure.value)
    assert not database_exists(scratch_name())


def database_properties(name: str) -> tuple[str, str, str, str]:
    return db.fetchone(
        "SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, t.spcname "
        "FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = %s",
        [name],
    )  # type: ignore[return-value]


@pytest.mark.long
def test_a_killed_rehearsal_is_cleaned_up_by_the_next_one(prepared, no_scratch, settings):
    conf = settings.SALESFLOW
    env = manage_env(SALESFLOW_BACKUP_DIR=str(conf["BACKUP_DIR"]), SALESFLOW_ROLE_PREFIX=conf["ROLE_PREFIX"])

    def verifying_in_scratch() -> bool:
        if not database_exists(scratch_name()):
            return False
        with psycopg_connect(scratch_name()) as scratch:
            return bool(
                scratch.execute(
                    "SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = 'schema_migrations'"
                ).fetchone()
                and scratch.execute(
                    "SELECT 1 FROM public.schema_migrations WHERE phase = 'verify' AND status = 'RUNNING'"
                ).fetchone()
            )

    kill_when(
        ["migrate_phase", "rehearse", "--noinput", "--load-seconds", "30", "--load-queries", "0"],
        verifying_in_scratch,
        "the scratch run's verify phase",
        env=env,
        timeout=120,
        interval=0.2,
    )
    assert database_exists(scratch_name())
    assert rehearsal_roles()

    out = run("migrate_phase", "rehearse", interactive=False, format="json", **LOAD)

    report = json.loads(out)
    assert report["ok"]
    assert f"database {scratch_name()}" in report["cleaned_up_before"]
    assert not database_exists(scratch_name())
    assert not rehearsal_roles()
    killed = MigrationRecord.objects.filter(phase="rehearse").order_by("attempt").first()
    assert killed is not None
    assert killed.status == Status.FAILED
    assert killed.error_message.startswith("interrupted")
