"""Content fingerprints hash each column by its type's own hash where equal values are identical, and
still compare with fingerprints an earlier release recorded by hashing each row's text."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management.base import CommandError
from django.db import NotSupportedError, connection, transaction
from psycopg import sql

from migrator import catalog
from migrator.core.context import TenantRef
from migrator.core.fingerprint import Fingerprint
from migrator.models import MigrationRecord, Status
from migrator.ops import fingerprint
from migrator.ops.table_copy import TableCopy
from migrator.phases.data import tenant_copy
from migrator.tables import TENANT_DATA_TABLES
from tests.helpers import run
from tests.migrator.helpers import latest, value

SCRATCH = "fingerprint_scratch"


def type_facts(type_sql: str, collation: str | None = None) -> bool:
    """catalog.hashed_by_value for a column of ``type_sql`` (under ``collation``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL("SELECT {t}::regtype::oid::bigint, coalesce(to_regcollation({c})::oid::bigint, 0)").format(
                t=sql.Literal(type_sql), c=sql.Literal(collation)
            )
        )
        type_oid, collation_oid = cursor.fetchone()
    return catalog.hashed_by_value(int(type_oid), int(collation_oid))


def test_types_whose_equal_values_are_identical_are_hashed_by_value(seeded):
    default_collation = 100
    for type_sql in ("bigint", "integer", "boolean", "timestamptz", "date", "uuid"):
        assert type_facts(type_sql), type_sql
    for type_sql in ("text", "varchar"):
        assert catalog.hashed_by_value(int(value("SELECT %s::regtype::oid::bigint", [type_sql])), default_collation)
    # equal but different: 1.0 = 1.00, -0 = 0, and types with no equalimage support at all
    for type_sql in ("numeric", "double precision", "real", "jsonb", "bigint[]", "json"):
        assert not type_facts(type_sql), type_sql


def test_text_under_a_nondeterministic_collation_is_hashed_by_its_text(seeded):
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "CREATE COLLATION public.fingerprint_ci (provider = icu, locale = 'und-u-ks-level2', "
                "deterministic = false)"
            )
    except NotSupportedError:  # the embedded server: "ICU is not supported in this build"
        pytest.skip("this server is built without ICU, the only provider of nondeterministic collations")
    assert not type_facts("text", "public.fingerprint_ci")
    assert type_facts("text", "C")


@pytest.fixture
def scratch_copy(seeded: dict[str, Any]) -> TableCopy:
    """Two identical tables of every kind of column the methods treat differently."""
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCRATCH)))
        for table in ("source", "target"):
            cursor.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint PRIMARY KEY, owner_id bigint, amount numeric, note text, data jsonb)"
                ).format(sql.Identifier(SCRATCH, table))
            )
            cursor.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT g, 1000 + g, g * 1.5, 'note ' || g, jsonb_build_object('n', g) "
                    "FROM generate_series(1, 50) g"
                ).format(sql.Identifier(SCRATCH, table))
            )
    return TableCopy(SCRATCH, "source", SCRATCH, "target", ("id", "owner_id", "amount", "note", "data"))


def change_target(statement: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL(statement).format(t=sql.Identifier(SCRATCH, "target")))


def matches(copy: TableCopy, method: str = fingerprint.BY_VALUE) -> bool:
    source, target = fingerprint.both_fingerprints(copy, method)
    return source == target


def test_equal_tables_have_equal_fingerprints_by_either_method(scratch_copy):
    assert matches(scratch_copy)
    assert matches(scratch_copy, fingerprint.BY_TEXT)
    source, _target = fingerprint.both_fingerprints(scratch_copy)
    assert str(source).startswith("50:v2:")
    assert str(fingerprint.both_fingerprints(scratch_copy, fingerprint.BY_TEXT)[0]).count(":") == 1


def test_values_swapped_between_rows_change_the_fingerprint(scratch_copy):
    # A sum of hash_record_extended alone would not see this: it is linear in the column hashes.
    change_target("UPDATE {t} SET owner_id = CASE id WHEN 1 THEN 1002 ELSE 1001 END WHERE id IN (1, 2)")
    assert not matches(scratch_copy)
    assert fingerprint.differing_keys(scratch_copy) == [(1,), (2,)]


def test_an_equal_number_written_differently_changes_the_fingerprint(scratch_copy):
    change_target("UPDATE {t} SET amount = 1.50 WHERE id = 1")  # 1.5 = 1.50, but not the same value kept
    assert value(sql.SQL("SELECT amount::text FROM {} WHERE id = 1").format(sql.Identifier(SCRATCH, "target"))) == (
        "1.50"
    )
    assert not matches(scratch_copy)
    assert not matches(scratch_copy, fingerprint.BY_TEXT)


def test_a_changed_text_or_json_value_changes_the_fingerprint(scratch_copy):
    change_target("UPDATE {t} SET note = 'Note 3' WHERE id = 3")
    assert not matches(scratch_copy)
    change_target("UPDATE {t} SET note = 'note 3', data = '{{\"n\": 4}}' WHERE id = 3")
    assert not matches(scratch_copy)
    change_target("UPDATE {t} SET data = '{{\"n\": 3}}' WHERE id = 3")
    assert matches(scratch_copy)


@pytest.mark.parametrize(
    ("recorded", "method"),
    [
        ("240:v2:0000000000000000abcd", fingerprint.BY_VALUE),
        ("240:0000000000000000abcd", fingerprint.BY_TEXT),
        ("240:v3:0000000000000000abcd", fingerprint.EXACT),
    ],
)
def test_a_recorded_fingerprint_is_read_in_the_form_it_was_written(recorded: str, method: str):
    parsed = Fingerprint.parse(recorded)
    assert (parsed.rows, parsed.digest, parsed.method) == (240, "0000000000000000abcd", method)
    assert str(parsed) == recorded  # written back unchanged
    assert parsed == Fingerprint.parse(recorded)
    assert Fingerprint.parse_recorded(recorded) == parsed


def test_fingerprints_made_differently_are_not_equal():
    assert Fingerprint.parse("240:v2:abcd") != Fingerprint.parse("240:v3:abcd")
    assert Fingerprint.parse("240:v2:abcd") != Fingerprint.parse("241:v2:abcd")
    assert Fingerprint.parse_recorded(None) is None
    assert Fingerprint.parse_recorded("") is None
    with pytest.raises(ValueError, match="not a recorded fingerprint"):
        Fingerprint.parse("240:v9:abcd")


def record_validations_the_earlier_way(tenant_id: str) -> None:
    """Rewrite the tenant's phase-3 validation rows as an earlier release recorded them (row text hashed)."""
    for spec in TENANT_DATA_TABLES:
        copy = tenant_copy(TenantRef(tenant_id), spec)
        source, target = fingerprint.both_fingerprints(copy, fingerprint.BY_TEXT)
        updated = MigrationRecord.objects.filter(
            migration_id=f"data/{tenant_id}/validate/{spec.target_table}", status=Status.COMPLETED
        ).update(source_fingerprint=str(source), target_fingerprint=str(target))
        assert updated == 1


def test_cutover_compares_with_fingerprints_an_earlier_release_recorded(migrated):
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    record_validations_the_earlier_way("acme_0001")
    contacts = sql.Identifier("tenant_acme_0001", "contacts")
    phone = value(sql.SQL("SELECT phone FROM {} WHERE id = 1").format(contacts))

    # A legacy write since phase 3 is still seen through the earlier fingerprints ...
    value(sql.SQL("UPDATE {} SET phone = 'changed' WHERE id = 1 RETURNING 1").format(contacts))
    with pytest.raises(CommandError, match=r"tenant_acme_0001\.contacts: \d+ rows validated, \d+ now, content changed"):
        run("migrate_phase", "cutover", "--tenant", "acme_0001", interactive=False)
    # ... and with it undone, the tenant cuts over against them.
    value(sql.SQL("UPDATE {} SET phone = %s WHERE id = 1 RETURNING 1").format(contacts), [phone])
    run("migrate_phase", "cutover", "--tenant", "acme_0001", interactive=False)
    assert latest("cutover/acme_0001/archive_legacy/tenant_acme_0001").status == Status.COMPLETED
