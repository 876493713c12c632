"""Phases 4 (security), 5 (verify), 6 (cutover) and rollback, on seeded legacy data.

Most tests start from the ``migrated`` stage (phases 1-3 done on the seeded data). Tests that restore
the phase-1 backup, or damage it, run phase 1 themselves so their backup is a real one of their own.
"""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from psycopg import sql

from migrator import catalog, db
from migrator.config import get_config
from migrator.engine import tracking
from migrator.models import MigrationRecord, Status
from migrator.ops import grants
from migrator.ops.backup import latest_backup
from migrator.phases import ORDERED
from migrator.phases.prepare import PreparePhase
from migrator.tables import TENANT_DATA_TABLES, service_tables
from tenants.models import MigrationState, Tenant
from tests.helpers import legacy_fingerprints, run

TENANTS = ["acme_0001", "globex_0002", "empty_0001"]


PHASES = tuple(p.name for p in ORDERED)


def migrate_up_to(last_phase: str, done: str | None = None) -> None:
    """Run the phases in order up to ``last_phase``, starting after ``done`` (the stage's last phase)."""
    for phase in PHASES[PHASES.index(done) + 1 if done else 0 :]:
        run("migrate_phase", phase, interactive=False, batch_size=100)
        if phase == last_phase:
            return


def has_privilege(role: str, schema: str, table: str, privilege: str) -> bool:
    return bool(
        db.fetchvalue(
            "SELECT has_table_privilege(%s, format('%%I.%%I', %s::text, %s::text), %s)",
            [role, schema, table, privilege],
        )
    )


def test_security_grants_exactly_the_privilege_matrix(migrated):
    migrate_up_to("security", done="data")
    roles = get_config().service_roles
    for service, role in roles.items():
        assert db.fetchvalue("SELECT NOT rolcanlogin FROM pg_roles WHERE rolname = %s", [role]) is True
        for schema, tables in service_tables().items():
            assert bool(db.fetchvalue("SELECT has_schema_privilege(%s, %s, 'USAGE')", [role, schema])) == (
                schema == service
            )
            for table in tables:
                for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                    assert has_privilege(role, schema, table, privilege) == (schema == service), (role, schema, table)
        for tenant in TENANTS:
            schema = f"tenant_{tenant}"
            assert has_privilege(role, schema, "contact_data_contacts", "SELECT") == (service == "contact")
            assert has_privilege(role, schema, "activity_data_activities", "UPDATE") == (service == "activity")
            # legacy tables stay out of every service's reach
            assert not has_privilege(role, schema, "contacts", "SELECT")
        assert not has_privilege(role, "public", "tenants", "SELECT")
        assert not has_privilege(role, "public", "schema_migrations", "SELECT")
        assert not db.fetchvalue("SELECT has_schema_privilege(%s, 'public', 'CREATE')", [role])
    assert grants.privilege_problems(get_config(), [f"tenant_{t}" for t in TENANTS]) == []
    assert set(Tenant.objects.values_list("migration_state", flat=True)) == {MigrationState.SECURED}


def test_security_rerun_is_a_no_op_and_finds_a_stray_grant(migrated):
    migrate_up_to("security", done="data")
    assert "0 steps to run" in run("migrate_phase", "security", interactive=False)
    role = get_config().service_role("activity")
    db.execute(sql.SQL("GRANT SELECT ON tenant_acme_0001.contact_data_contacts TO {}").format(sql.Identifier(role)))
    assert f"{role} has SELECT on tenant_acme_0001.contact_data_contacts" in grants.privilege_problems(
        get_config(), ["tenant_acme_0001"], service_tables=False
    )


def test_verify_records_counts_isolation_indexes_and_crud(migrated):
    migrate_up_to("verify", done="data")
    latest = tracking.latest_records("verify")
    assert {r.status for r in latest.values()} == {Status.COMPLETED}
    assert len(latest) == 3 + 5 * len(TENANTS) + 1  # + the load test, one per run
    counts = latest["verify/*/row_counts"].details["counts"]
    for tenant in TENANTS:
        assert counts[tenant] == {
            t.legacy_table: catalog.row_count(f"tenant_{tenant}", t.legacy_table) for t in TENANT_DATA_TABLES
        }
    assert (counts["acme_0001"]["contacts"], counts["acme_0001"]["activities"]) == (120, 240)
    assert not any(counts["empty_0001"].values())
    assert latest["verify/acme_0001/index_usage"].details["index_used"] == {
        "contact by email": True,
        "activities by contact": True,
        "activities by due date": True,
    }
    orm_counts = latest["verify/globex_0002/isolation"].details["orm_counts"]
    assert orm_counts == {t.table: catalog.row_count("tenant_globex_0002", t.table) for t in TENANT_DATA_TABLES}
    assert (orm_counts["contact_data_contacts"], orm_counts["activity_data_activities"]) == (120, 240)
    # the CRUD smoke test left nothing behind
    assert catalog.row_count("tenant_acme_0001", "contact_data_contacts") == 120


def test_verify_fails_when_an_index_is_missing_or_a_role_can_read_too_much(migrated):
    migrate_up_to("security", done="data")
    db.execute("DROP INDEX tenant_globex_0002.activity_data_due_idx")
    role = get_config().service_role("contact")
    db.execute(
        sql.SQL("GRANT USAGE ON SCHEMA auth TO {r}; GRANT SELECT ON auth.users TO {r}").format(r=sql.Identifier(role))
    )
    with pytest.raises(CommandError, match="phase verify failed"):
        run("migrate_phase", "verify", interactive=False)
    latest = tracking.latest_records("verify")
    assert latest["verify/globex_0002/index_usage"].status == Status.FAILED
    assert "activities by due date does not use an index" in latest["verify/globex_0002/index_usage"].error_message
    assert latest["verify/*/role_isolation"].status == Status.FAILED
    assert f"{role} can read auth.users" in latest["verify/*/role_isolation"].error_message


def test_cutover_archives_legacy_tables_and_marks_tenants_live(seeded, stage_db):
    before = legacy_fingerprints(TENANTS)
    stage_db.use("migrated")  # this seeded data after phases 1-3
    migrate_up_to(PHASES[-1], done="data")  # cutover, and any phase after it
    archive = get_config().archive_schema
    for tenant in TENANTS:
        assert catalog.tables_by_schema([f"tenant_{tenant}"])[f"tenant_{tenant}"] == {
            *(t.table for t in TENANT_DATA_TABLES),
            "django_migrations",
        }
    archived = catalog.tables_by_schema([archive])[archive]
    assert "acme_0001__contacts" in archived
    assert "salesflow_auth__users" in archived
    # archived tables hold exactly the legacy data
    assert before["tenant_acme_0001.contacts"][0] == catalog.row_count(archive, "acme_0001__contacts")
    assert not catalog.schema_exists(get_config().legacy_auth_schema)
    assert set(Tenant.objects.values_list("migration_state", flat=True)) == {MigrationState.LIVE}
    out = run("migrate_phase", "status", check=True)
    assert "Migration complete" in out


def test_cutover_refuses_before_validation_without_asking_for_confirmation(prepared):
    for interactive in (True, False):
        with pytest.raises(CommandError, match=r"cutover cannot start: .* verify expected_schemas \(all\) never ran"):
            run("migrate_phase", "cutover", interactive=interactive)
    assert catalog.table_exists("tenant_acme_0001", "contacts")


def test_cutover_drop_legacy_drops_instead_of_archiving(migrated):
    migrate_up_to("verify", done="data")
    run("migrate_phase", "cutover", interactive=False, drop_legacy=True)
    assert not catalog.table_exists("tenant_acme_0001", "contacts")
    assert (
        not catalog.schema_exists(get_config().archive_schema)
        or not catalog.tables_by_schema([get_config().archive_schema])[get_config().archive_schema]
    )


def test_all_runs_every_phase_on_several_tenants_in_parallel(seeded):
    out = run("migrate_phase", "all", interactive=False, jobs=2, batch_size=50)
    for phase in ("prepare", "schemas", "data", "security", "verify", "cutover"):
        assert f"Phase {phase}:" in out
    assert not MigrationRecord.objects.filter(status=Status.FAILED).exists()
    assert catalog.row_count("tenant_acme_0001", "contact_data_contacts") == 120
    assert catalog.row_count("tenant_globex_0002", "activity_data_activities") == 240
    assert run("migrate_phase", "all", interactive=False).count("0 steps to run") == len(ORDERED)


def test_all_in_jsonl_writes_a_line_per_phase_and_stops_at_the_first_that_fails(schemas_ready):
    db.execute("ALTER TABLE tenant_acme_0001.contacts ADD COLUMN nickname text")  # no target column

    out = StringIO()
    with pytest.raises(CommandError, match="phase data failed"):
        call_command("migrate_phase", "all", interactive=False, format="jsonl", stdout=out, stderr=StringIO())

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["phase"], line["ok"]) for line in lines] == [("prepare", True), ("schemas", True), ("data", False)]
    assert lines[1]["planned"] == 0  # the stage had phases 1-2 done already
    assert any("nickname" in failed["error"] for failed in lines[2]["failed"])
    assert all(line["elapsed_s"] >= 0 for line in lines)


def test_rollback_before_cutover_leaves_legacy_exactly_as_it_was(seeded, stage_db):
    before = legacy_fingerprints(TENANTS)
    stage_db.use("migrated")  # this seeded data after phases 1-3
    migrate_up_to("verify", done="data")
    history = MigrationRecord.objects.count()
    run("migrate_phase", "rollback", interactive=False)
    assert legacy_fingerprints(TENANTS) == before
    for schema in service_tables():
        assert not catalog.schema_exists(schema)
    assert not catalog.table_exists("tenant_acme_0001", "contact_data_contacts")
    assert not any(catalog.role_exists(r) for r in get_config().service_roles.values())
    # history kept; the rollback itself is recorded; undone steps are ROLLED_BACK
    assert MigrationRecord.objects.count() > history
    assert set(MigrationRecord.objects.filter(phase="rollback").values_list("status", flat=True)) == {Status.COMPLETED}
    assert not MigrationRecord.objects.filter(phase="data", status=Status.COMPLETED).exists()
    assert MigrationRecord.objects.filter(phase="data", status=Status.ROLLED_BACK).count() > 0
    # and the migration can be done again from there
    run("migrate_phase", "schemas", interactive=False)
    run("migrate_phase", "data", interactive=False)
    assert catalog.row_count("tenant_acme_0001", "contact_data_contacts") == 120


def test_rollback_after_cutover_is_refused_without_restore(migrated):
    migrate_up_to("cutover", done="data")
    with pytest.raises(CommandError, match="use `migrate_phase rollback --restore`"):
        run("migrate_phase", "rollback", interactive=False)


def test_restore_brings_back_the_backup_and_keeps_the_history(seeded):
    before = legacy_fingerprints(TENANTS)
    migrate_up_to("cutover")
    # The admin site's accounts are made after phase 1's backup: the restore keeps them, with what they point at.
    reviewers = Group.objects.create(name="reviewers")
    reviewers.permissions.add(Permission.objects.get(codename="view_migrationrecord"))
    operator = User.objects.create_superuser("operator", password="a long passphrase")
    operator.groups.add(reviewers)
    AccessAttempt.objects.create(username="intruder", ip_address="10.0.0.9", failures_since_start=3)
    history_ids = set(MigrationRecord.objects.values_list("id", flat=True))
    out = run("migrate_phase", "rollback", interactive=False, restore=True, verbosity=2)
    # pg_restore's progress, item by item of the backup's table of contents, up to the last one
    restored = [tuple(map(int, m)) for m in re.findall(r"\.\.\. (\d+)/(\d+) items of the backup restored", out)]
    assert len(restored) >= 2, out
    assert restored[-1][0] == restored[-1][1] > 100
    operator = User.objects.get(username="operator")
    assert operator.check_password("a long passphrase")
    assert operator.is_superuser
    assert operator.has_perm("migrator.view_migrationrecord")
    assert list(operator.groups.values_list("name", flat=True)) == ["reviewers"]
    assert AccessAttempt.objects.get(username="intruder").failures_since_start == 3
    assert legacy_fingerprints(TENANTS) == before
    assert not catalog.schema_exists(get_config().archive_schema)
    assert not catalog.table_exists("tenant_acme_0001", "contact_data_contacts")
    after_ids = set(MigrationRecord.objects.values_list("id", flat=True))
    assert history_ids < after_ids  # every earlier row survived, and the rollback added its own
    restore_row = MigrationRecord.objects.get(phase="rollback", step="restore_backup")
    assert restore_row.status == Status.COMPLETED
    assert restore_row.details["history_rows"] >= len(history_ids)
    assert restore_row.details["admin_account_rows"] >= 4  # the user, the group, both links, the attempt...
    User.objects.create_user("after the restore")  # the accounts' id sequences were put back too
    # a new record after the restore gets a fresh id (the sequence was put back too)
    run("migrate_phase", "prepare", interactive=False)
    assert Tenant.objects.count() == len(TENANTS)


def test_restore_refuses_a_tampered_or_missing_backup(seeded):
    migrate_up_to("schemas")
    info = latest_backup(PreparePhase.BACKUP)
    assert info is not None
    toc = Path(info.path) / "toc.dat"
    toc.write_bytes(toc.read_bytes() + b"tampered")
    with pytest.raises(CommandError, match="has been altered"):
        run("migrate_phase", "rollback", interactive=False, restore=True)
    assert catalog.table_exists("tenant_acme_0001", "contact_data_contacts")  # nothing was touched
    failed = MigrationRecord.objects.get(phase="rollback", step="check_backup")
    assert failed.status == Status.FAILED
    assert "altered" in failed.error_message
    for file in Path(info.path).iterdir():
        file.unlink()
    Path(info.path).rmdir()
    with pytest.raises(CommandError, match="is missing"):
        run("migrate_phase", "rollback", interactive=False, restore=True)
