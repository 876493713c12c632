"""Phase 3: rows land exactly once with identical content, reference data merged and remapped,
conflicts and unmapped columns block, sequences continue, validation catches corruption."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core.management import CommandError
from django.db import connection
from django_tenants.utils import schema_context
from psycopg import sql

from migrator import db
from migrator.models import DeferredConstraint, MigrationRecord, ReferenceMapping, Status
from migrator.tables import AUTH_MODELS, LEGACY_AUTH_TABLES, REFERENCE_TABLES, TENANT_DATA_TABLES, model_columns
from salesflow.accounts.models import User
from salesflow.activity.models import ActivityType
from salesflow.activity_data.models import Activity
from salesflow.contact.models import ContactType
from salesflow.contact_data.models import Contact
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.helpers import (
    TABLES,
    attempts,
    content,
    count,
    latest,
    one_line,
    plain_columns,
    records,
    refused_run,
    rows,
    value,
    wrongly_remapped,
)

TENANTS = ["acme_0001", "empty_0001", "globex_0002"]
POPULATED = ["acme_0001", "globex_0002"]


def rows_by_id(schema: str, table: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    with connection.cursor() as cur:
        cur.execute(
            db.render(sql.SQL("SELECT * FROM {} WHERE id = ANY(%s)").format(sql.Identifier(schema, table))), [ids]
        )
        names = [c.name for c in cur.description]
        return {row[0]: dict(zip(names, row, strict=False)) for row in cur.fetchall()}


def codes(schema: str, table: str) -> dict[int, str]:
    return dict(rows(sql.SQL("SELECT id, code FROM {}").format(sql.Identifier(schema, table))))


def test_every_legacy_row_lands_exactly_once_with_identical_content(migrated):
    for tenant in TENANTS:
        schema = f"tenant_{tenant}"
        for legacy, (target, _remapped, _legacy_ref, _shared) in TABLES.items():
            cols = plain_columns(legacy)
            source = content(schema, legacy, cols)
            assert source[0] == (0 if tenant == "empty_0001" else {"contacts": 120, "activities": 240}[legacy])
            assert content(schema, target, cols) == source, f"{schema}.{target}"
            assert count(schema, target) == count(schema, legacy) == source[1]  # no duplicate, no gap
            assert wrongly_remapped(schema, legacy) == 0

    # column by column for a sample, the reference column through its code
    schema = "tenant_globex_0002"
    for legacy, (target, remapped, legacy_ref, shared) in TABLES.items():
        sample = list(range(1, 241, 7))
        before, after = rows_by_id(schema, legacy, sample), rows_by_id(schema, target, sample)
        assert len(before) == len(after) >= 17
        legacy_codes, shared_codes = codes(schema, legacy_ref), codes(*shared)
        for row_id, old in before.items():
            new = after[row_id]
            assert set(new) == set(old)
            for column, old_value in old.items():
                if column == remapped:
                    assert shared_codes.get(new[column]) == legacy_codes.get(old_value), (row_id, column)
                else:
                    assert new[column] == old_value, (row_id, column)


def test_auth_tables_are_copied_with_the_same_ids(migrated):
    for table in LEGACY_AUTH_TABLES:
        cols = model_columns(AUTH_MODELS[table])
        query = sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) "
            "FROM (SELECT {cols} FROM {t}) r"
        )
        legacy = db.fetchone(query.format(cols=db.ident_list(cols), t=sql.Identifier("salesflow_auth", table)))
        assert legacy[0] > 0
        assert db.fetchone(query.format(cols=db.ident_list(cols), t=sql.Identifier("auth", table))) == legacy, table


def test_reference_data_is_merged_by_key_with_an_id_map(migrated):
    for ref in REFERENCE_TABLES:
        legacy_keys: set[str] = set()
        legacy_total = 0
        for tenant in TENANTS:
            found = rows(
                sql.SQL("SELECT {k} FROM {t}").format(
                    k=sql.Identifier(ref.merge_key), t=sql.Identifier(f"tenant_{tenant}", ref.legacy_table)
                )
            )
            legacy_total += len(found)
            legacy_keys |= {r[0] for r in found}
        shared_keys = [
            r[0]
            for r in rows(
                sql.SQL("SELECT {k} FROM {t}").format(
                    k=sql.Identifier(ref.merge_key), t=sql.Identifier(ref.schema, ref.table)
                )
            )
        ]
        assert sorted(shared_keys) == sorted(legacy_keys)  # one shared row per key, every key present
        assert ReferenceMapping.objects.filter(reference_table=ref.legacy_table).count() == legacy_total
        # every tenant's old id points at the shared row with the same values
        values = [c for c in model_columns(ref.model) if c != "id"]
        for tenant in TENANTS:
            mismatched = value(
                sql.SQL(
                    "SELECT count(*) FROM public.migrator_reference_map m JOIN {s} s ON s.id = m.new_id "
                    "LEFT JOIN {l} l ON l.id = m.old_id WHERE m.reference_table = %s AND m.tenant_id = %s "
                    "AND ({lcols}) IS DISTINCT FROM ({scols})"
                ).format(
                    s=sql.Identifier(ref.schema, ref.table),
                    l=sql.Identifier(f"tenant_{tenant}", ref.legacy_table),
                    lcols=sql.SQL(", ").join(sql.Identifier("l", c) for c in values),
                    scols=sql.SQL(", ").join(sql.Identifier("s", c) for c in values),
                ),
                [ref.legacy_table, tenant],
            )
            assert mismatched == 0, (ref.legacy_table, tenant)
    assert dict(ContactType.objects.values_list("code", "name"))["former"] == "Former customer"
    merge = latest("data/*/merge_reference/contact_types")
    assert merge.details["discarded_variants"] == []
    assert merge.details["policy"] == "refuse"
    assert merge.rows_expected == merge.rows_copied == 3 + 4 + 5


def test_tracking_rows_record_counts_checkpoints_and_fingerprints(migrated):
    copy = latest("data/acme_0001/copy_table/activity_data_activities")
    assert (copy.status, copy.rows_expected, copy.rows_copied, copy.checkpoint) == (Status.COMPLETED, 240, 240, 240)
    assert copy.details["batches"] == 5  # batch size 50
    assert copy.details["rebuilt"] == copy.details["deferred"] == 6  # primary key, 3 indexes, 2 FKs: dropped, rebuilt
    check = latest("data/acme_0001/validate/activity_data_activities")
    assert check.status == Status.COMPLETED
    assert check.source_fingerprint == check.target_fingerprint
    assert check.source_fingerprint.startswith("240:")
    assert not DeferredConstraint.objects.exists()
    assert not MigrationRecord.objects.filter(phase="data").exclude(status=Status.COMPLETED).exists()
    assert not MigrationRecord.objects.filter(status=Status.FAILED).exists()  # nor in phases 1 and 2
    assert set(Tenant.objects.values_list("migration_state", flat=True)) == {MigrationState.DATA_MIGRATED}
    # indexes and foreign keys are back and validated
    assert (
        value(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'tenant_acme_0001' "
            "AND tablename = 'activity_data_activities'"
        )
        == 4
    )
    assert rows(
        "SELECT t.relname, count(*), bool_and(c.convalidated) FROM pg_constraint c "
        "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = 'tenant_acme_0001' AND c.contype = 'f' "
        "AND t.relname IN ('contact_data_contacts', 'activity_data_activities') "
        "GROUP BY 1 ORDER BY 1"
    ) == [("activity_data_activities", 2, True), ("contact_data_contacts", 1, True)]


def test_sequences_continue_after_the_highest_copied_id(migrated):
    with schema_context("tenant_acme_0001"):
        contact = Contact.objects.create(first_name="New", created_at="2025-01-01T00:00Z")
        activity = Activity.objects.create(
            contact=contact, activity_type=ActivityType.objects.first(), subject="new", created_at="2025-01-01T00:00Z"
        )
    assert (contact.pk, activity.pk) == (121, 241)
    with schema_context("tenant_empty_0001"):
        assert Contact.objects.create(first_name="First", created_at="2025-01-01T00:00Z").pk == 1
    assert User.objects.create(email="new@example.com", password_hash="x", created_at="2025-01-01T00:00Z").pk == 16
    assert ContactType.objects.create(code="new", name="New").pk == ContactType.objects.count()


def test_a_second_run_is_a_no_op(migrated):
    before = list(MigrationRecord.objects.order_by("id").values_list("id", "status", "attempt"))
    target = content("tenant_acme_0001", "contact_data_contacts", ["id", "first_name", "contact_type_id"])

    out = run("migrate_phase", "data", interactive=False)

    assert "Phase data: 0 steps to run" in out
    assert list(MigrationRecord.objects.order_by("id").values_list("id", "status", "attempt")) == before
    assert content("tenant_acme_0001", "contact_data_contacts", ["id", "first_name", "contact_type_id"]) == target


def test_validate_only_runs_the_validation_again(migrated):
    out = run("migrate_phase", "data", interactive=False, validate_only=True)

    validated = len(LEGACY_AUTH_TABLES) + 3 * len(TENANT_DATA_TABLES)  # 3 tenants
    assert f"Phase data: {validated} steps to run" in out
    validations = records(phase="data", step="validate")
    assert len(validations) == 2 * validated  # the phase's own run and this one
    assert sorted({(r.attempt, r.status) for r in validations}) == [(1, Status.COMPLETED), (2, Status.COMPLETED)]
    assert all(len(attempts(r.migration_id)) == 1 for r in records(phase="data", step="copy_table"))


def test_validation_detects_a_corrupted_target_row(migrated):
    db.execute("UPDATE tenant_acme_0001.contact_data_contacts SET first_name = 'Mallory' WHERE id = 17")
    db.execute("DELETE FROM tenant_globex_0002.activity_data_activities WHERE id = 230")

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "data", interactive=False, validate_only=True)

    assert one_line(str(exc.value))
    assert str(exc.value).startswith("phase data failed: 2 step(s) failed")
    contacts = latest("data/acme_0001/validate/contact_data_contacts")
    assert (contacts.attempt, contacts.status) == (2, Status.FAILED)
    assert "content differs" in contacts.error_message
    assert contacts.error_message.endswith("differing keys (first 1): 17")
    activities = latest("data/globex_0002/validate/activity_data_activities")
    assert activities.status == Status.FAILED
    assert activities.error_message.endswith("differing keys (first 1): 230")
    assert (activities.rows_expected, activities.rows_copied) == (240, 239)
    assert [(r.attempt, r.status) for r in attempts("data/globex_0002/validate/contact_data_contacts")] == [
        (1, Status.COMPLETED),
        (2, Status.COMPLETED),
    ]
    assert attempts("data/acme_0001/validate/contact_data_contacts")[0].status == Status.COMPLETED  # history kept


def test_a_copy_reports_its_indexes_and_foreign_keys_as_they_are_rebuilt(schemas_ready):
    # 120 contacts in batches of 50: copied without their indexes and foreign keys, rebuilt afterwards
    out = run("migrate_phase", "data", interactive=False, batch_size=50, verbosity=2)

    rebuilt = re.findall(r"copy_table contact_data_contacts \.\.\. (\d+)/(\d+) indexes and foreign keys rebuilt", out)
    assert rebuilt, out
    done, total = map(int, rebuilt[-1])
    assert done == total >= 2  # the primary key and the email index at least, up to the last one
    assert not DeferredConstraint.objects.exists()


def test_conflicting_reference_data_blocks_until_first_wins_is_chosen(schemas_ready):
    db.execute("UPDATE tenant_globex_0002.contact_types SET name = 'Client' WHERE code = 'customer'")

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "data", interactive=False)

    message = str(exc.value)
    assert one_line(message)
    assert (
        "1 conflicting contact_types across tenants (same code, different values): "
        "code 'customer': (Customer) in acme_0001 vs (Client) in globex_0002; fix the legacy data or pass "
        "--reference-conflicts=first-wins"
    ) in message
    merge = latest("data/*/merge_reference/contact_types")
    assert merge.status == Status.FAILED
    assert "code 'customer'" in merge.error_message
    assert not ContactType.objects.exists()  # nothing merged ...
    assert not ReferenceMapping.objects.filter(reference_table="contact_types").exists()
    assert count("tenant_acme_0001", "contact_data_contacts") == 0  # ... and no tenant data copied

    run("migrate_phase", "data", interactive=False, reference_conflicts="first-wins")

    merge = latest("data/*/merge_reference/contact_types")
    assert (merge.attempt, merge.status) == (2, Status.COMPLETED)
    assert merge.details["policy"] == "first-wins"
    assert merge.details["discarded_variants"] == [
        {"key": "customer", "kept": "(Customer)", "value": "(Client)", "tenants": ["globex_0002"]}
    ]
    assert ContactType.objects.get(code="customer").name == "Customer"
    assert wrongly_remapped("tenant_globex_0002", "contacts") == 0  # globex's customers point at the shared row
    for phase in ("security", "verify", "cutover"):
        run("migrate_phase", phase, interactive=False)
    # the variant the merge discarded differs from its shared row on purpose: no edit since phase 3
    assert Tenant.objects.get(tenant_id="globex_0002").migration_state == MigrationState.LIVE


def test_an_extra_legacy_column_blocks_its_table_and_the_other_tenants_finish(schemas_ready):
    db.execute("ALTER TABLE tenant_acme_0001.contacts ADD COLUMN nickname text")

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "data", interactive=False, jobs=2, batch_size=50)

    message = str(exc.value)
    assert one_line(message)
    assert message.startswith(
        "phase data failed: 1 step(s) failed, first [acme_0001] copy_table contact_data_contacts: "
        "tenant_acme_0001.contacts has columns with no target column: nickname; nothing was copied"
    )
    failed = latest("data/acme_0001/copy_table/contact_data_contacts")
    assert failed.status == Status.FAILED
    assert "contacts has columns with no target column: nickname" in failed.error_message
    assert count("tenant_acme_0001", "contact_data_contacts") == 0
    assert count("tenant_acme_0001", "activity_data_activities") == 0
    assert count("tenant_globex_0002", "activity_data_activities") == 240
    assert latest("data/globex_0002/validate/activity_data_activities").status == Status.COMPLETED
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.FAILED
    assert Tenant.objects.get(tenant_id="globex_0002").migration_state == MigrationState.DATA_MIGRATED

    db.execute("ALTER TABLE tenant_acme_0001.contacts DROP COLUMN nickname")
    run("migrate_phase", "data", interactive=False, jobs=2)

    assert [(r.attempt, r.status) for r in attempts("data/acme_0001/copy_table/contact_data_contacts")] == [
        (1, Status.FAILED),
        (2, Status.COMPLETED),
    ]
    assert count("tenant_acme_0001", "contact_data_contacts") == 120


def test_an_extra_column_in_a_reference_table_blocks_the_merge(schemas_ready):
    db.execute("ALTER TABLE tenant_globex_0002.activity_types ADD COLUMN icon text")

    with pytest.raises(
        CommandError,
        match=r"tenant_globex_0002\.activity_types has columns with no target column: "
        r"icon; nothing was merged",
    ):
        run("migrate_phase", "data", interactive=False)
    assert latest("data/*/merge_reference/activity_types").status == Status.FAILED
    assert not ActivityType.objects.exists()


def test_a_missing_legacy_table_is_reported_not_a_crash(seeded):
    db.execute("DROP TABLE tenant_globex_0002.activities")
    run("migrate_phase", "prepare", interactive=False)
    register = latest("prepare/globex_0002/register/tenant_globex_0002")
    assert register.details["inspection"]["missing"] == ["activities"]
    assert "missing: activities" in register.details["message"]
    run("migrate_phase", "schemas", interactive=False)

    out = run("migrate_phase", "data", interactive=False)

    assert "no legacy table tenant_globex_0002.activities: nothing to copy" in out
    copy = latest("data/globex_0002/copy_table/activity_data_activities")
    assert copy.status == Status.COMPLETED
    assert copy.details["legacy_table_missing"] is True
    assert count("tenant_globex_0002", "contact_data_contacts") == 120
    assert count("tenant_globex_0002", "activity_data_activities") == 0


def test_data_before_schemas_says_what_to_run_first(prepared):
    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "data", interactive=False)

    assert one_line(str(exc.value))
    assert str(exc.value).startswith(
        "phase data failed: 3 step(s) failed, first [acme_0001] copy_table contact_data_contacts: phase schemas is not "
        "complete for tenant acme_0001; run `migrate_phase schemas` first"
    )
    refused = latest("data/acme_0001/copy_table/contact_data_contacts")
    assert refused.status == Status.FAILED
    assert "run `migrate_phase schemas` first" in refused.error_message
    assert latest("data/acme_0001/copy_table/activity_data_activities").status == Status.PENDING


def test_a_tenant_filtered_run_then_a_full_run_migrates_every_tenant(schemas_ready):
    run("migrate_phase", "data", interactive=False, tenant=["globex_0002"])
    assert count("tenant_globex_0002", "contact_data_contacts") == 120
    assert count("tenant_acme_0001", "contact_data_contacts") == 0

    run("migrate_phase", "data", interactive=False)

    for tenant in POPULATED:
        assert count(f"tenant_{tenant}", "contact_data_contacts") == 120
        assert count(f"tenant_{tenant}", "activity_data_activities") == 240
        assert wrongly_remapped(f"tenant_{tenant}", "contacts") == 0
        assert wrongly_remapped(f"tenant_{tenant}", "activities") == 0
    assert sorted(ContactType.objects.values_list("code", flat=True)) == [
        "customer",
        "former",
        "lead",
        "partner",
        "prospect",
        "vendor",
    ]
    assert [r.status for r in attempts("data/*/merge_reference/contact_types")] == [Status.COMPLETED] * 2
    assert "Phase data: 0 steps to run" in run("migrate_phase", "data", interactive=False)


def test_a_tenant_found_after_phase_3_is_migrated_by_running_the_phases_again(migrated):
    late = "tenant_late_0009"
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(late)))
    for table in ("contact_types", "tag_categories", "activity_types", "contacts", "activities"):
        db.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                sql.Identifier(late, table), sql.Identifier("tenant_acme_0001", table)
            )
        )
    db.execute(
        sql.SQL("INSERT INTO {} (id, code, name) VALUES (1, 'reseller', 'Reseller'), (2, 'lead', 'Lead')").format(
            sql.Identifier(late, "contact_types")
        )
    )
    db.execute(
        sql.SQL("INSERT INTO {} (id, code, name) VALUES (7, 'call', 'Phone call')").format(
            sql.Identifier(late, "activity_types")
        )
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} (id, first_name, contact_type_id, created_at) VALUES "
            "(1, 'R', 1, now()), (2, 'L', 2, now()), (3, 'N', NULL, now())"
        ).format(sql.Identifier(late, "contacts"))
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} (id, contact_id, activity_type_id, subject, created_at) VALUES (1, 3, 7, 'ring', now())"
        ).format(sql.Identifier(late, "activities"))
    )

    for phase in ("prepare", "schemas", "data"):
        run("migrate_phase", phase, interactive=False)

    assert Tenant.objects.get(tenant_id="late_0009").migration_state == MigrationState.DATA_MIGRATED
    assert count(late, "contact_data_contacts") == 3
    assert count(late, "activity_data_activities") == 1
    assert wrongly_remapped(late, "contacts") == 0
    assert wrongly_remapped(late, "activities") == 0
    assert ContactType.objects.filter(code="reseller").exists()
    assert ContactType.objects.filter(code="lead").count() == 1
    assert latest("data/*/merge_reference/contact_types").attempt == 2
    # its tag_categories table is empty: nothing left to merge, so the next run has nothing to do
    assert "Phase data: 0 steps to run" in run("migrate_phase", "data", interactive=False)


def test_a_missing_legacy_auth_table_fails_with_the_reason(schemas_ready):
    db.execute("DROP TABLE salesflow_auth.user_roles")

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "data", interactive=False)

    assert one_line(str(exc.value))
    assert "[all] copy_auth user_roles: legacy table salesflow_auth.user_roles does not exist" in str(exc.value)
    failed = latest("data/*/copy_auth/user_roles")
    assert failed.status == Status.FAILED
    assert failed.error_message.startswith("legacy table salesflow_auth.user_roles does not exist; restore it")
    assert latest("data/*/copy_auth/users").status == Status.COMPLETED
    assert latest("data/*/merge_reference/contact_types").status == Status.PENDING  # the phase stopped there


def test_a_legacy_table_dropped_after_phase_1_counted_its_rows_is_refused_not_skipped(schemas_ready):
    # Phase 1 counted 240 activities in globex; someone drops the table before the copy.
    db.execute("DROP TABLE tenant_globex_0002.activities CASCADE")

    _line, copy = refused_run("data", step="data/globex_0002/copy_table/activity_data_activities")

    assert copy.error_message.startswith(
        "legacy table tenant_globex_0002.activities is gone, but phase 1 counted 240 rows in it: put it back"
    )
    assert "--skip-schema tenant_globex_0002" in copy.error_message
    assert latest("data/acme_0001/copy_table/activity_data_activities").status == Status.COMPLETED
    with pytest.raises(CommandError):
        run("migrate_phase", "data", "--validate-only", interactive=False)
    assert latest("data/globex_0002/validate/activity_data_activities").status == Status.FAILED
