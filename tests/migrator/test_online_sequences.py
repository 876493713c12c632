"""Rows the online validation applies come in with their legacy ids: the new tables' sequences continue after them,
so verify's CRUD check (and any insert into a new table) does not collide with a row a legacy writer added."""

from __future__ import annotations

from tests.helpers import run
from tests.migrator.helpers import psycopg_connect, value

TENANT = "tenant_acme_0001"


def test_a_legacy_insert_applied_by_the_validation_moves_the_new_sequence_past_it(schemas_ready):
    run("migrate_phase", "data", "--online", interactive=False)
    with psycopg_connect() as conn:
        new_id = conn.execute(
            f"INSERT INTO {TENANT}.contacts (first_name, contact_type_id, created_at) "
            f"SELECT 'Late', min(id), now() FROM {TENANT}.contact_types RETURNING id"
        ).fetchone()[0]
    run("migrate_phase", "data", "--validate-only", interactive=False)  # applies it in the validation's snapshot
    assert value(f"SELECT count(*) FROM {TENANT}.contact_data_contacts WHERE id = %s", [new_id]) == 1
    next_id = value(f"SELECT nextval(pg_get_serial_sequence('{TENANT}.contact_data_contacts', 'id'))")
    assert next_id > new_id
