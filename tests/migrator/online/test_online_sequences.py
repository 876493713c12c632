"""Online, both sides draw ids from one id space: the legacy sequence issues odd ids, the new one even ids,
both past every id either side ever issued, so no id is issued twice whichever side a row is inserted on."""

from __future__ import annotations

from psycopg import sql

from tests.helpers import run
from tests.migrator.helpers import psycopg_connect, value

TENANT = "tenant_acme_0001"
LEGACY, NEW = sql.Identifier(TENANT, "contacts"), sql.Identifier(TENANT, "contact_data_contacts")


def insert(conn, table: sql.Identifier, name: str) -> int:
    return conn.execute(
        sql.SQL("INSERT INTO {} (first_name, created_at) VALUES (%s, now()) RETURNING id").format(table), [name]
    ).fetchone()[0]


def test_both_sides_issue_ids_from_one_id_space_past_every_id_issued(schemas_ready):
    with psycopg_connect() as conn:  # an id issued and its row deleted before the migration
        gone = insert(conn, LEGACY, "gone")
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(LEGACY), [gone])
    run("migrate_phase", "data", "--online", interactive=False)
    with psycopg_connect() as conn:
        issued = [
            (side, insert(conn, table, f"{side} {n}"))
            for n in range(4)
            for side, table in (("legacy", LEGACY), ("new", NEW))
        ]
    ids = [i for _side, i in issued]
    assert len(set(ids)) == len(ids)
    assert min(ids) > gone
    assert all(i % 2 == 1 for side, i in issued if side == "legacy")
    assert all(i % 2 == 0 for side, i in issued if side == "new")
    # each row is on both sides, under its one id
    for side, row_id in issued:
        for table in (LEGACY, NEW):
            name = value(sql.SQL("SELECT first_name FROM {} WHERE id = %s").format(table), [row_id])
            assert str(name).startswith(side), (side, row_id, table)
