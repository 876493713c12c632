"""Reference data edited during the online window, on either side: the shared tables and every tenant's
legacy tables end exactly right, or cutover refuses the tenant with one line naming the row."""

from __future__ import annotations

import psycopg
import pytest
from django.core.management.base import CommandError

from migrator.ops import twoway
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.helpers import psycopg_connect, value
from tests.migrator.online.support import CONTACTS, OTHER_TENANT, TENANT, assert_in_sync, cut_over_online, on, on_tenant


def shared_code_of_contact(contact_id: int) -> str:
    return value(
        on_tenant(
            "SELECT t.code FROM {} c JOIN contact.contact_types t ON t.id = c.contact_type_id WHERE c.id = %s", CONTACTS
        ),
        [contact_id],
    )


def test_a_rename_of_a_row_only_this_tenant_has_renames_the_shared_row(synced):
    with psycopg_connect() as conn:
        conn.execute(on_tenant("INSERT INTO {} (code, name) VALUES ('mine', 'Mine')", "contact_types"))
        conn.execute(on_tenant("UPDATE {} SET name = 'Mine, renamed' WHERE code = 'mine'", "contact_types"))
    assert value("SELECT name FROM contact.contact_types WHERE code = 'mine'") == "Mine, renamed"
    cut_over_online()  # nothing differs
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.LIVE


def test_a_rename_of_a_shared_row_refuses_the_tenant_at_cutover_until_it_is_undone(synced):
    name = value(on_tenant("SELECT name FROM {} WHERE code = 'lead'", "contact_types"))
    with psycopg_connect() as conn:
        conn.execute(on_tenant("UPDATE {} SET name = 'Lead (acme only)' WHERE code = 'lead'", "contact_types"))
    assert value("SELECT name FROM contact.contact_types WHERE code = 'lead'") == name  # other tenants' too
    run("migrate_phase", "security", interactive=False)
    run("migrate_phase", "verify", interactive=False)
    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "cutover", interactive=False)
    message = str(refused.value)
    assert "tenant_acme_0001.contact_types id" in message
    assert "'lead'" in message
    assert "--reference-conflicts first-wins" in message
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state != MigrationState.LIVE
    assert Tenant.objects.get(tenant_id="globex_0002").migration_state == MigrationState.LIVE
    assert value(on_tenant("SELECT name FROM {} WHERE code = 'lead'", "contact_types")) == "Lead (acme only)"
    with psycopg_connect() as conn:  # edited back: cutover goes on
        conn.execute(on_tenant("UPDATE {} SET name = %s WHERE code = 'lead'", "contact_types"), [name])
    run("migrate_phase", "cutover", interactive=False)
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.LIVE


def test_a_rename_of_a_shared_row_after_cutover_refuses_the_tenant_at_finalize_until_undone_or_first_wins(synced):
    """Archived, the old application's edit would be lost without a word: the shared row, which other tenants
    use, does not follow it."""
    cut_over_online()
    with psycopg_connect() as conn:
        conn.execute(on_tenant("UPDATE {} SET name = 'Partner (acme wording)' WHERE code = 'partner'", "contact_types"))

    with pytest.raises(CommandError) as refused:
        run("migrate_phase", "finalize", observe_seconds=0.1, force=True, interactive=False)

    message = str(refused.value)
    assert "tenant_acme_0001: reference rows edited since cutover differ from the shared rows" in message
    assert "'partner'" in message
    assert "nothing was archived" in message
    assert twoway.is_synced(TENANT)
    assert not twoway.is_synced(OTHER_TENANT)  # the other tenant finalized
    assert value(on_tenant("SELECT name FROM {} WHERE code = 'partner'", "contact_types")) == "Partner (acme wording)"

    run(
        "migrate_phase",
        "finalize",
        observe_seconds=0.1,
        force=True,
        reference_conflicts="first-wins",
        interactive=False,
    )
    assert not twoway.is_synced(TENANT)
    assert value("SELECT name FROM contact.contact_types WHERE code = 'partner'") != "Partner (acme wording)"


def test_a_code_deleted_and_created_again_maps_to_one_shared_row(synced):
    contacts = value(on_tenant("SELECT count(*) FROM {}", "contacts"))
    with psycopg_connect() as conn:
        conn.execute(on_tenant("INSERT INTO {} (code, name) VALUES ('again', 'Again')", "contact_types"))
        conn.execute(on_tenant("DELETE FROM {} WHERE code = 'again'", "contact_types"))
        conn.execute(on_tenant("INSERT INTO {} (code, name) VALUES ('again', 'Again')", "contact_types"))
        conn.execute(
            on_tenant(
                "INSERT INTO {} (first_name, contact_type_id, created_at) SELECT 'Again', id, now() FROM {} "
                "WHERE code = 'again'",
                "contacts",
                "contact_types",
            )
        )
    assert value("SELECT count(*) FROM contact.contact_types WHERE code = 'again'") == 1
    joined = value(
        on_tenant("SELECT count(*) FROM {} c JOIN contact.contact_types t ON t.id = c.contact_type_id", CONTACTS)
    )
    typed = value(on_tenant("SELECT count(*) FROM {} WHERE contact_type_id IS NOT NULL", CONTACTS))
    assert joined == typed
    assert value(on_tenant("SELECT count(*) FROM {}", CONTACTS)) == contacts + 1
    assert_in_sync()


def test_a_recoded_row_moves_the_tenants_rows_to_the_other_shared_row(synced):
    with psycopg_connect() as conn:
        conn.execute(on_tenant("INSERT INTO {} (code, name) VALUES ('old_code', 'Recoded')", "contact_types"))
        contact = conn.execute(
            on_tenant(
                "INSERT INTO {} (first_name, contact_type_id, created_at) SELECT 'Recode', id, now() FROM {} "
                "WHERE code = 'old_code' RETURNING id",
                "contacts",
                "contact_types",
            )
        ).fetchone()[0]
        conn.execute(on_tenant("UPDATE {} SET code = 'new_code' WHERE code = 'old_code'", "contact_types"))
    assert shared_code_of_contact(contact) == "new_code"
    assert value("SELECT count(*) FROM contact.contact_types WHERE code = 'old_code'") == 0  # nobody has it now
    assert_in_sync()
    cut_over_online()
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.LIVE


def test_a_shared_row_the_tenant_never_had_is_added_to_its_legacy_table(synced):
    with psycopg_connect() as conn:
        shared = conn.execute(
            "INSERT INTO contact.contact_types (code, name) VALUES ('from_new_app', 'From the new app') RETURNING id"
        ).fetchone()[0]
        contact = conn.execute(
            on_tenant(
                "INSERT INTO {} (first_name, contact_type_id, created_at) VALUES ('New', %s, now()) RETURNING id",
                CONTACTS,
            ),
            [shared],
        ).fetchone()[0]
    legacy_code = value(
        on_tenant(
            "SELECT t.code FROM {} c JOIN {} t ON t.id = c.contact_type_id WHERE c.id = %s", "contacts", "contact_types"
        ),
        [contact],
    )
    assert legacy_code == "from_new_app"
    assert value(on(OTHER_TENANT, "SELECT count(*) FROM {} WHERE code = 'from_new_app'", "contact_types")) == 0
    assert_in_sync()


def test_a_repeatable_read_writer_that_meets_a_shared_row_mapped_meanwhile_gets_a_serialization_failure(synced):
    """Its snapshot predates the mapping another transaction committed: 40001, which an application at that
    isolation level retries (and then succeeds), not a duplicate key of the legacy reference table."""
    with psycopg_connect() as conn:
        shared = conn.execute(
            "INSERT INTO contact.contact_types (code, name) VALUES ('zz1', 'ZZ1') RETURNING id"
        ).fetchone()[0]
    with psycopg_connect() as first, psycopg_connect() as second:  # autocommit: each statement on its own
        second.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ

        def second_sets_contact_21_after_first_set_contact_20() -> None:
            with second.transaction():
                second.execute(on_tenant("SELECT count(*) FROM {}", CONTACTS))  # its snapshot, before the first's write
                first.execute(on_tenant("UPDATE {} SET contact_type_id = %s WHERE id = 20", CONTACTS), [shared])
                second.execute(on_tenant("UPDATE {} SET contact_type_id = %s WHERE id = 21", CONTACTS), [shared])

        with pytest.raises(psycopg.errors.SerializationFailure, match="mapped by a concurrent transaction"):
            second_sets_contact_21_after_first_set_contact_20()
        with second.transaction():  # retried, as the application does
            second.execute(on_tenant("UPDATE {} SET contact_type_id = %s WHERE id = 21", CONTACTS), [shared])
    assert shared_code_of_contact(21) == "zz1"
    assert value(on_tenant("SELECT count(*) FROM {} WHERE code = 'zz1'", "contact_types")) == 1
    assert_in_sync()


def test_an_edit_of_a_shared_row_by_the_new_application_reaches_every_tenant(synced):
    with psycopg_connect() as conn:
        conn.execute("UPDATE contact.contact_types SET name = 'Partner (new app)' WHERE code = 'partner'")
    for schema in (TENANT, OTHER_TENANT):
        assert value(on(schema, "SELECT name FROM {} WHERE code = 'partner'", "contact_types")) == "Partner (new app)"
    cut_over_online()
    assert Tenant.objects.filter(migration_state=MigrationState.LIVE).count() == 3


def test_a_shared_row_a_finalized_tenant_uses_stays_when_the_last_synced_tenant_with_it_deletes_it(synced):
    """acme is finalized (its legacy tables archived, nothing maps its uses of shared rows any more) and its new
    application uses a type only globex had; globex's old application then deletes that type."""
    cut_over_online()
    run("migrate_phase", "finalize", observe_seconds=0.2, interactive=False, tenant=["acme_0001"])
    with psycopg_connect() as conn:
        conn.execute(on(OTHER_TENANT, "INSERT INTO {} (code, name) VALUES ('supplier', 'Supplier')", "contact_types"))
        shared = value("SELECT id FROM contact.contact_types WHERE code = 'supplier'")
        conn.execute(on_tenant("UPDATE {} SET contact_type_id = %s WHERE id IN (1, 2, 3)", CONTACTS), [shared])
        conn.execute(on(OTHER_TENANT, "DELETE FROM {} WHERE code = 'supplier'", "contact_types"))

    assert value("SELECT count(*) FROM contact.contact_types WHERE id = %s", [shared]) == 1
    assert value(on_tenant("SELECT count(*) FROM {} WHERE contact_type_id = %s", CONTACTS), [shared]) == 3


def test_a_shared_row_the_new_application_deletes_empties_its_uses_on_both_sides(synced):
    """The new side's foreign key sets the contacts' type NULL; the synced tenants' legacy contacts follow."""
    shared = value("SELECT id FROM contact.contact_types WHERE code = 'lead'")
    used = value(on_tenant("SELECT count(*) FROM {} WHERE contact_type_id = %s", CONTACTS), [shared])
    assert used > 0
    with psycopg_connect() as conn:
        conn.execute("DELETE FROM contact.contact_types WHERE id = %s", [shared])

    for schema in (TENANT, OTHER_TENANT):
        assert value(on(schema, "SELECT count(*) FROM {} WHERE code = 'lead'", "contact_types")) == 0
        assert_in_sync(schema)
    assert value(on_tenant("SELECT count(*) FROM {} WHERE contact_type_id = %s", CONTACTS), [shared]) == 0
