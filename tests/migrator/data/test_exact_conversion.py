"""Legacy columns of another type than their target column: copied exactly or refused, legacy
timestamps read in the legacy application's time zone, and validation in the legacy type's terms.

A value its target column cannot hold exactly (a fraction into bigint, a number out of its range,
text longer than a varchar(n), a json object with a key twice) refuses the table before its first
batch, in one line naming the column, both types, how many rows and some of their ids.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.core.management import CommandError
from django.db import connection
from psycopg import sql

from migrator import db
from migrator.core.context import RunOptions
from migrator.core.errors import MigrationError
from migrator.core.fingerprint import Fingerprint
from migrator.models import Status
from migrator.ops import fingerprint
from migrator.ops.conversions import legacy_timezone
from migrator.ops.copy import copy_table
from migrator.ops.table_copy import TableCopy
from migrator.tables import TENANT_DATA_TABLES
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.helpers import count, latest, manage_here, one_line, psycopg_connect, value

TENANT = "acme_0001"
SCHEMA = f"tenant_{TENANT}"
CONTACTS = next(t for t in TENANT_DATA_TABLES if t.legacy_table == "contacts")
LEGACY = sql.Identifier(SCHEMA, "contacts")
TARGET = sql.Identifier(SCHEMA, CONTACTS.table)


def refused_data_run(**options: Any) -> str:
    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "data", "--tenant", TENANT, interactive=False, **options)
    assert one_line(str(exc.value))
    copied = latest(f"data/{TENANT}/copy_table/{CONTACTS.table}")
    assert copied.status == Status.FAILED
    assert one_line(copied.error_message)
    assert copied.error_message in str(exc.value)
    assert count(SCHEMA, CONTACTS.table) == 0  # nothing copied, not even a first batch
    return copied.error_message


def test_fractions_into_bigint_are_refused_not_rounded(schemas_ready):
    db.execute(sql.SQL("ALTER TABLE {} ALTER owner_id TYPE numeric(10,2)").format(LEGACY))
    db.execute(sql.SQL("UPDATE {} SET owner_id = coalesce(owner_id, 7) + 0.5 WHERE id IN (4, 9, 2)").format(LEGACY))

    message = refused_data_run()

    assert f"{SCHEMA}.contacts.owner_id (numeric(10,2))" in message
    assert f"{SCHEMA}.{CONTACTS.table}.owner_id (bigint)" in message
    assert "has 3 rows of values it cannot hold exactly" in message
    assert "e.g. id 2, 4, 9" in message


def test_a_number_out_of_the_target_range_is_refused_naming_the_column(schemas_ready):
    db.execute(sql.SQL("ALTER TABLE {} ALTER owner_id TYPE numeric").format(LEGACY))
    db.execute(sql.SQL("UPDATE {} SET owner_id = 1e20 WHERE id = 6").format(LEGACY))

    message = refused_data_run()

    assert "bigint out of range" not in message
    assert f"{SCHEMA}.contacts.owner_id (numeric) has 1 rows of values it cannot hold exactly" in message
    assert "(bigint), e.g. id 6;" in message


def test_a_numeric_nan_is_refused_naming_the_column_in_phase_1_and_3(seeded):
    """NaN into bigint raises "cannot convert" (0A000, not a data exception): a traceback of --plan and an
    error naming no table before."""
    db.execute(sql.SQL("ALTER TABLE {} ALTER owner_id TYPE numeric").format(LEGACY))
    db.execute(sql.SQL("UPDATE {} SET owner_id = 'NaN' WHERE id = 6").format(LEGACY))
    expected = "contacts.owner_id: column type (numeric in the legacy table, bigint in the target; 1 rows it cannot "

    planned = manage_here("migrate_phase", "prepare", "--plan")
    assert planned.returncode == 0, planned.stderr
    assert "Traceback" not in planned.stdout + planned.stderr
    assert expected in planned.stdout

    with pytest.raises(CommandError, match="drift finding") as refused:
        run("migrate_phase", "prepare", interactive=False)
    assert one_line(str(refused.value))
    assert expected in str(refused.value)
    assert "cannot convert" not in str(refused.value)

    run("migrate_phase", "prepare", "--skip-schema", SCHEMA, interactive=False)  # the other tenants go on
    states = dict(Tenant.objects.values_list("tenant_id", "migration_state"))
    assert states == {
        TENANT: MigrationState.EXCLUDED,
        "empty_0001": MigrationState.REGISTERED,
        "globex_0002": MigrationState.REGISTERED,
    }


def test_the_two_way_sync_refuses_a_legacy_write_the_new_table_cannot_hold_exactly(schemas_ready):
    """What phase 3 refuses in the rows there were, the sync refuses in a row written during the online
    window: rounded into the new table, the sides differed silently until cutover refused the tenant."""
    db.execute(sql.SQL("ALTER TABLE {} ALTER owner_id TYPE numeric(12,4)").format(LEGACY))  # whole numbers: exact
    run("migrate_phase", "data", "--online", "--tenant", TENANT, interactive=False)

    with psycopg_connect() as conn, pytest.raises(psycopg.errors.DataException) as refused:
        conn.execute(sql.SQL("UPDATE {} SET owner_id = 2.5 WHERE id = 1").format(LEGACY))
    assert f"{SCHEMA}.contacts (owner_id numeric(12,4) -> bigint): 1 written rows hold values" in str(refused.value)
    with psycopg_connect() as conn:
        conn.execute(sql.SQL("UPDATE {} SET owner_id = 7 WHERE id = 1").format(LEGACY))
    assert value(sql.SQL("SELECT owner_id FROM {} WHERE id = 1").format(TARGET)) == 7


def test_exact_numbers_of_another_type_are_copied_and_validate(schemas_ready):
    db.execute(sql.SQL("ALTER TABLE {} ALTER owner_id TYPE numeric(10,2)").format(LEGACY))  # 1001 is 1001.00

    run("migrate_phase", "data", "--tenant", TENANT, interactive=False)

    assert value(
        sql.SQL(
            "SELECT count(*) FROM {l} l JOIN {t} t USING (id) WHERE l.owner_id IS NOT DISTINCT FROM t.owner_id"
        ).format(l=LEGACY, t=TARGET)
    ) == count(SCHEMA, "contacts")
    validated = latest(f"data/{TENANT}/validate/{CONTACTS.table}")
    assert validated.status == Status.COMPLETED
    assert validated.source_fingerprint == validated.target_fingerprint
    assert ":v3:" in validated.source_fingerprint  # compared in the legacy type's terms
    assert ":v2:" in latest(f"data/{TENANT}/validate/{TENANT_DATA_TABLES[-1].table}").source_fingerprint


def test_text_longer_than_a_target_varchar_is_refused_not_cut(schemas_ready):
    db.execute(sql.SQL("ALTER TABLE {} ALTER phone TYPE varchar(12)").format(TARGET))
    db.execute(sql.SQL("UPDATE {} SET phone = NULL").format(LEGACY))
    db.execute(sql.SQL("UPDATE {} SET phone = repeat('7', 13) WHERE id IN (3, 5)").format(LEGACY))
    db.execute(sql.SQL("UPDATE {} SET phone = repeat('7', 12) WHERE id = 8").format(LEGACY))  # fits

    message = refused_data_run()

    assert f"{SCHEMA}.contacts.phone (text) has 2 rows" in message
    assert f"{SCHEMA}.{CONTACTS.table}.phone (character varying(12)), e.g. id 3, 5;" in message


def test_json_objects_with_a_key_twice_are_refused(schemas_ready):
    db.execute(sql.SQL("ALTER TABLE {} ALTER custom_fields TYPE json").format(LEGACY))
    db.execute(sql.SQL("""UPDATE {} SET custom_fields = '{{"a": 1, "a": 2}}' WHERE id = 2""").format(LEGACY))
    db.execute(
        sql.SQL("""UPDATE {} SET custom_fields = '[1, {{"x": {{"b": 1, "c": 2, "b": 3}}}}]' WHERE id = 7""").format(
            LEGACY
        )
    )
    db.execute(sql.SQL("""UPDATE {} SET custom_fields = '{{"a":  1, "b": [1,2]}}' WHERE id = 8""").format(LEGACY))

    message = refused_data_run()

    assert f"{SCHEMA}.contacts.custom_fields (json) has 2 rows of objects with a key twice" in message
    assert "(jsonb), e.g. id 2, 7;" in message


def set_database_timezone(zone: str) -> None:
    """The database's default zone, as the legacy application's sessions get it; Django's own session
    keeps its TIME_ZONE (UTC), which the copy must not read legacy timestamps in."""
    db.execute(
        sql.SQL("ALTER DATABASE {} SET timezone = {}").format(
            sql.Identifier(connection.settings_dict["NAME"]), sql.Literal(zone)
        )
    )
    connection.close()  # the next session starts with it


def shifted_rows(zone: str) -> int:
    """Target rows whose created_at is not the legacy wall-clock time read in ``zone``."""
    return int(
        value(
            sql.SQL(
                "SELECT count(*) FROM {l} l JOIN {t} t USING (id) "
                "WHERE (l.created_at AT TIME ZONE %s) IS DISTINCT FROM t.created_at"
            ).format(l=LEGACY, t=TARGET),
            [zone],
        )
    )


def test_legacy_timestamps_are_read_in_the_database_time_zone(schemas_ready):
    db.execute(sql.SQL("ALTER TABLE {} ALTER created_at TYPE timestamp").format(LEGACY))
    set_database_timezone("America/New_York")
    assert value("SHOW timezone") == "UTC"  # Django's session
    assert legacy_timezone(RunOptions()) == ("America/New_York", "database setting")

    run("migrate_phase", "data", "--tenant", TENANT, interactive=False)

    assert count(SCHEMA, CONTACTS.table) == count(SCHEMA, "contacts") > 0
    assert shifted_rows("America/New_York") == 0
    assert shifted_rows("UTC") == count(SCHEMA, "contacts")
    copied = latest(f"data/{TENANT}/copy_table/{CONTACTS.table}")
    assert copied.details["legacy_timezone"] == "America/New_York"
    assert copied.details["timestamp_columns"] == ["created_at"]
    validated = latest(f"data/{TENANT}/validate/{CONTACTS.table}")
    assert validated.status == Status.COMPLETED
    assert validated.source_fingerprint == validated.target_fingerprint

    # Validation compares instants in that zone: a target an hour off differs.
    db.execute(sql.SQL("UPDATE {} SET created_at = created_at + interval '1 hour' WHERE id = 3").format(TARGET))
    with pytest.raises(CommandError):
        run("migrate_phase", "data", "--tenant", TENANT, interactive=False, validate_only=True)
    assert latest(f"data/{TENANT}/validate/{CONTACTS.table}").details["differing_keys"] == [[3]]


def test_an_explicit_legacy_time_zone_overrides_the_database_setting_and_is_kept(schemas_ready):
    db.execute(sql.SQL("ALTER TABLE {} ALTER created_at TYPE timestamp").format(LEGACY))
    set_database_timezone("America/New_York")
    assert legacy_timezone(RunOptions(legacy_timezone="Asia/Tokyo")) == ("Asia/Tokyo", "--legacy-timezone")

    run("migrate_phase", "data", "--tenant", TENANT, interactive=False, legacy_timezone="Asia/Tokyo")

    assert shifted_rows("Asia/Tokyo") == 0
    assert latest(f"data/{TENANT}/copy_table/{CONTACTS.table}").details["legacy_timezone"] == "Asia/Tokyo"
    # A later run without the option keeps reading this tenant in Tokyo time (validation matches) ...
    run("migrate_phase", "data", "--tenant", TENANT, interactive=False, validate_only=True)
    assert latest(f"data/{TENANT}/validate/{CONTACTS.table}").details["legacy_timezone"] == "Asia/Tokyo"
    # ... and one that names another zone is refused rather than mixing two.
    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "data", "--tenant", TENANT, interactive=False, legacy_timezone="Europe/Paris")
    assert one_line(str(exc.value))
    assert f"{SCHEMA}: its legacy timestamps were copied as times of Asia/Tokyo, not Europe/Paris" in str(exc.value)


def test_captured_legacy_writes_are_applied_in_the_zone_the_tenant_was_copied_in(schemas_ready):
    db.execute(sql.SQL("ALTER TABLE {} ALTER created_at TYPE timestamp").format(LEGACY))
    set_database_timezone("America/New_York")
    run("migrate_phase", "data", "--tenant", TENANT, "--online", interactive=False)
    db.execute(sql.SQL("UPDATE {} SET created_at = '2026-01-15 10:00' WHERE id IN (3, 4)").format(LEGACY))
    set_database_timezone("UTC")  # changed since the copy: not followed, the tenant would mix two zones

    run("migrate_phase", "sync", "--tenant", TENANT, interactive=False)

    assert shifted_rows("America/New_York") == 0
    assert value(sql.SQL("SELECT created_at = '2026-01-15 15:00+00' FROM {} WHERE id = 3").format(TARGET))
    run("migrate_phase", "data", "--tenant", TENANT, "--online", interactive=False, validate_only=True)
    validated = latest(f"data/{TENANT}/validate/{CONTACTS.table}")
    assert validated.source_fingerprint == validated.target_fingerprint
    assert validated.details["legacy_timezone"] == "America/New_York"


def test_an_unknown_legacy_time_zone_is_refused(schemas_ready):
    with pytest.raises(CommandError, match=r"--legacy-timezone 'Mars/Olympus': no such time zone on this server"):
        run("migrate_phase", "data", interactive=False, legacy_timezone="Mars/Olympus")
    assert count(SCHEMA, CONTACTS.table) == 0


SCRATCH = "conversion_scratch"


def test_a_lossy_cast_no_longer_validates(seeded):
    """The copy's check bypassed (a row inserted as the earlier copy did: rounded by the cast): the
    earlier fingerprint, which hashed the legacy value cast to the target type, passes it; this one refuses."""
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCRATCH)))
    source, target = sql.Identifier(SCRATCH, "source"), sql.Identifier(SCRATCH, "target")
    db.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, amount numeric(10,2))").format(source))
    db.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, amount bigint)").format(target))
    db.execute(sql.SQL("INSERT INTO {} VALUES (1, 2.00), (2, 1.50), (3, NULL)").format(source))
    copy = TableCopy(SCRATCH, "source", SCRATCH, "target", ("id", "amount"))
    with pytest.raises(MigrationError, match=r"conversion_scratch\.source\.amount \(numeric\(10,2\)\) has 1 rows"):
        copy_table(copy, 100)
    assert count(SCRATCH, "target") == 0

    db.execute(sql.SQL("INSERT INTO {} (id, amount) SELECT id, amount FROM {}").format(target, source))
    assert value(sql.SQL("SELECT amount FROM {} WHERE id = 2").format(target)) == 2  # rounded

    old_source, old_target = fingerprint.both_fingerprints(copy, fingerprint.BY_VALUE)
    assert old_source == old_target
    new_source, new_target = fingerprint.both_fingerprints(copy)
    assert new_source != new_target
    assert str(new_source).startswith("3:v3:")
    assert fingerprint.differing_keys(copy) == [(2,)]
    assert Fingerprint.parse(str(new_source)).method == fingerprint.EXACT
    assert Fingerprint.parse(str(old_source)).method == fingerprint.BY_VALUE
