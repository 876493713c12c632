"""Reliability: the reference map never gives rows the wrong type, and validation would notice if it did.

A tenant rolled back alone loses its map rows (its reference rows may change before it is migrated
again), validation compares reference codes rather than remapped ids, and reference rows added to a
tenant that was merged before are merged when the tenant is copied.
"""

from __future__ import annotations

import pytest
from django.core.management import CommandError
from psycopg import sql

from migrator import db
from migrator.models import MigrationRecord, ReferenceMapping, Status
from migrator.tables import TENANT_DATA_TABLES, reference_table
from salesflow.contact.models import ContactType
from tests.helpers import run
from tests.migrator.helpers import TABLES, count, latest, one_line, wrongly_remapped

TENANT = "acme_0001"
SCHEMA = f"tenant_{TENANT}"
CONTACTS = next(t for t in TENANT_DATA_TABLES if t.legacy_table == "contacts")
TYPE_COLUMN, TYPE_TABLE = next(iter(CONTACTS.remap.items()))


def used_type(schema: str) -> tuple[int, str]:
    """The legacy contact type most contacts of ``schema`` point at: (id, code)."""
    return db.fetchone(
        sql.SQL(
            "SELECT r.id, r.code FROM {c} c JOIN {r} r ON r.id = c.{col} GROUP BY r.id, r.code ORDER BY count(*) "
            "DESC, r.id "
            "LIMIT 1"
        ).format(
            c=sql.Identifier(schema, "contacts"), r=sql.Identifier(schema, TYPE_TABLE), col=sql.Identifier(TYPE_COLUMN)
        )
    )  # type: ignore[return-value]


def test_a_tenant_rolled_back_alone_is_remapped_by_its_new_codes(migrated):
    type_id, old_code = used_type(SCHEMA)
    run("migrate_phase", "rollback", interactive=False, tenant=[TENANT])

    assert not ReferenceMapping.objects.filter(tenant_id=TENANT).exists()  # its map went with its tables
    assert ReferenceMapping.objects.filter(tenant_id="globex_0002").exists()
    db.execute(
        sql.SQL("UPDATE {} SET code = 'hot_lead', name = 'Hot lead' WHERE id = %s").format(
            sql.Identifier(SCHEMA, TYPE_TABLE)
        ),
        [type_id],
    )

    run("migrate_phase", "schemas", interactive=False)
    run("migrate_phase", "data", interactive=False)

    assert ContactType.objects.filter(code="hot_lead").exists()
    assert wrongly_remapped(SCHEMA, "contacts") == 0
    assert wrongly_remapped(SCHEMA, "activities") == 0
    assert wrongly_remapped("tenant_globex_0002", "contacts") == 0
    assert ContactType.objects.filter(code=old_code).exists()  # still used by the other tenant
    assert latest(f"data/{TENANT}/validate/contact_data_contacts").status == Status.COMPLETED


def test_validation_compares_reference_codes_not_remapped_ids(migrated):
    type_id, code = used_type(SCHEMA)
    other = ContactType.objects.exclude(code=code).order_by("id").first()
    assert other is not None
    # A stale map: the tenant's type now maps to another shared type; the copied rows follow it.
    ReferenceMapping.objects.filter(tenant_id=TENANT, reference_table=TYPE_TABLE, old_id=type_id).update(
        new_id=other.id
    )
    db.execute(
        sql.SQL("UPDATE {t} t SET {c} = %s FROM {l} l WHERE l.id = t.id AND l.{c} = %s").format(
            t=sql.Identifier(SCHEMA, CONTACTS.table),
            l=sql.Identifier(SCHEMA, "contacts"),
            c=sql.Identifier(TYPE_COLUMN),
        ),
        [other.id, type_id],
    )
    assert wrongly_remapped(SCHEMA, "contacts") > 0

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "data", interactive=False, validate_only=True)

    assert one_line(str(exc.value))
    failed = latest(f"data/{TENANT}/validate/{CONTACTS.table}")
    assert failed.status == Status.FAILED
    assert "content differs" in failed.error_message


def test_a_reference_row_added_to_a_merged_tenant_is_merged_when_the_tenant_is_copied(schemas_ready):
    db.execute(sql.SQL("ALTER TABLE {} ADD COLUMN nickname text").format(sql.Identifier(SCHEMA, "contacts")))
    with pytest.raises(CommandError):
        run("migrate_phase", "data", interactive=False)  # the tenant's contacts are blocked; the merge is done
    assert latest("data/*/merge_reference/contact_types").status == Status.COMPLETED
    assert count(SCHEMA, CONTACTS.table) == 0

    db.execute(sql.SQL("ALTER TABLE {} DROP COLUMN nickname").format(sql.Identifier(SCHEMA, "contacts")))
    db.execute(
        sql.SQL("INSERT INTO {} (id, code, name) VALUES (900, 'reseller', 'Reseller')").format(
            sql.Identifier(SCHEMA, TYPE_TABLE)
        )
    )
    db.execute(
        sql.SQL("UPDATE {} SET {} = 900 WHERE id <= 10").format(
            sql.Identifier(SCHEMA, "contacts"), sql.Identifier(TYPE_COLUMN)
        )
    )

    run("migrate_phase", "data", interactive=False)

    assert ContactType.objects.filter(code="reseller").exists()
    assert ReferenceMapping.objects.filter(tenant_id=TENANT, reference_table=TYPE_TABLE, old_id=900).exists()
    assert count(SCHEMA, CONTACTS.table) == count(SCHEMA, "contacts")
    assert wrongly_remapped(SCHEMA, "contacts") == 0
    assert (
        not MigrationRecord.objects.filter(phase="data", tenant_id=TENANT)
        .exclude(status__in=[Status.COMPLETED, Status.FAILED])
        .exists()
    )
    assert latest(f"data/{TENANT}/validate/{CONTACTS.table}").status == Status.COMPLETED
    assert reference_table(TYPE_TABLE).merge_key == "code"
    assert TABLES["contacts"][1] == TYPE_COLUMN
