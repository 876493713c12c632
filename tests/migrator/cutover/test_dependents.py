"""Objects that depend on legacy tables: phase 1 lists them, cutover carries foreign keys from other tables,
grants and comments to the new tables, and refuses a tenant (nothing changed) while anything else is undecided.
A drop of the legacy tables never cascades."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from django.core.management import CommandError
from django.db import IntegrityError, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.config import get_config
from migrator.models import Disposition, FindingKind
from migrator.ops.archive import archive_table_name
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.helpers import count, latest, one_line, table_names, value

ACME = "tenant_acme_0001"
NEW_CONTACTS = sql.Identifier(ACME, "contact_data_contacts")


@pytest.fixture
def analyst() -> Iterator[str]:
    """A role of another tool (an analytics account), dropped with what it was granted."""
    role = f"sftest{os.getpid()}_analyst"
    db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    yield role
    db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def add_invoices() -> None:
    """Another service's table with a foreign key to the tenant's contacts (deletes cascade to invoices)."""
    db.execute(
        "CREATE SCHEMA billing; "
        "CREATE TABLE billing.invoices (id bigint PRIMARY KEY, contact_id bigint NOT NULL "
        "REFERENCES tenant_acme_0001.contacts(id) ON DELETE CASCADE, amount numeric(10,2)); "
        "INSERT INTO billing.invoices SELECT id, id, 10 FROM tenant_acme_0001.contacts ORDER BY id LIMIT 5"
    )


def add_grants_and_comments(role: str) -> None:
    contacts = sql.Identifier(ACME, "contacts")
    db.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(contacts, sql.Identifier(role)))
    db.execute(sql.SQL("GRANT UPDATE (email) ON {} TO {}").format(contacts, sql.Identifier(role)))
    db.execute(sql.SQL("COMMENT ON TABLE {} IS 'customer contacts (PII)'").format(contacts))
    db.execute(sql.SQL("COMMENT ON COLUMN {}.email IS 'PII: e-mail address'").format(contacts))


def cut_over(**options: object) -> str:
    run("migrate_phase", "security")
    run("migrate_phase", "verify")
    return run("migrate_phase", "cutover", interactive=False, **options)


def test_phase_one_lists_every_dependent_with_what_cutover_does(seeded, analyst):
    add_invoices()
    add_grants_and_comments(analyst)
    db.execute(
        "CREATE VIEW public.acme_contacts AS SELECT id, email FROM tenant_acme_0001.contacts; "
        "CREATE MATERIALIZED VIEW public.acme_counts AS SELECT count(*) AS n FROM tenant_acme_0001.activities; "
        "CREATE FUNCTION public.acme_contact_count() RETURNS bigint LANGUAGE sql "
        "BEGIN ATOMIC SELECT count(*) FROM tenant_acme_0001.contacts; END; "
        "CREATE FUNCTION public.acme_audit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM 1 FROM tenant_acme_0001.contacts LIMIT 1; RETURN NEW; END $$; "
        "CREATE TRIGGER contacts_audit AFTER INSERT ON tenant_acme_0001.contacts "
        "FOR EACH ROW EXECUTE FUNCTION public.acme_audit(); "
        "CREATE RULE no_delete AS ON DELETE TO tenant_acme_0001.activities DO INSTEAD NOTHING; "
        "ALTER TABLE tenant_acme_0001.contacts ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY support_only ON tenant_acme_0001.contacts USING (owner_id IS NOT NULL); "
        "CREATE PUBLICATION warehouse FOR TABLE tenant_acme_0001.contacts; "
        "CREATE STATISTICS tenant_acme_0001.contacts_names ON first_name, last_name FROM tenant_acme_0001.contacts"
    )
    try:
        report = json.loads(run("migrate_phase", "prepare", plan=True, format="json"))["drift"]
    finally:
        db.execute("DROP PUBLICATION warehouse")

    found = {(g["kind"], g["object"]): g["disposition"] for g in report if g["examples"] == [ACME]}
    assert found == {
        (FindingKind.VIEW, "public.acme_contacts"): Disposition.CARRIED,
        (FindingKind.MATERIALIZED_VIEW, "public.acme_counts"): Disposition.DECISION,
        (FindingKind.FUNCTION, "acme_contact_count()"): Disposition.CARRIED,
        (FindingKind.FUNCTION_BY_NAME, "acme_audit()"): Disposition.DECISION,
        (FindingKind.FOREIGN_KEY_FROM, "billing.invoices.invoices_contact_id_fkey"): Disposition.CARRIED,
        (FindingKind.TRIGGER, "contacts_audit"): Disposition.CARRIED,
        (FindingKind.RULE, "no_delete"): Disposition.CARRIED,
        (FindingKind.ROW_SECURITY, "ROW LEVEL SECURITY"): Disposition.CARRIED,
        (FindingKind.POLICY, "support_only"): Disposition.CARRIED,
        (FindingKind.PUBLICATION, "warehouse"): Disposition.CARRIED,
        (FindingKind.STATISTICS, "tenant_acme_0001.contacts_names"): Disposition.CARRIED,
        (FindingKind.GRANT, analyst): Disposition.CARRIED,
        (FindingKind.COLUMN_GRANT, f"{analyst} on email"): Disposition.CARRIED,
        (FindingKind.COMMENT, "table"): Disposition.CARRIED,
        (FindingKind.COMMENT, "column email"): Disposition.CARRIED,
    }


def test_cutover_carries_foreign_keys_grants_and_comments_to_the_new_table(migrated, analyst):
    add_invoices()
    add_grants_and_comments(analyst)

    output = cut_over()

    assert "dependent objects carried to the new tables" in output
    contacts = f"{ACME}.contact_data_contacts"
    # The invoices' foreign key now references the new table: a new contact's invoice is accepted ...
    new_id = value(sql.SQL("INSERT INTO {} (created_at) VALUES (now()) RETURNING id").format(NEW_CONTACTS))
    db.execute("INSERT INTO billing.invoices VALUES (900001, %s, 1)", [new_id])
    # ... and deleting a contact cascades to its invoices, as it did on the legacy table.
    first = value("SELECT min(contact_id) FROM billing.invoices")
    db.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(NEW_CONTACTS), [first])
    assert value("SELECT count(*) FROM billing.invoices WHERE contact_id = %s", [first]) == 0
    assert (
        value("SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'invoices_contact_id_fkey'")
        == contacts
    )
    # The analytics role reads the new table as it read the old one, and may update only the e-mail column.
    assert value("SELECT has_table_privilege(%s, %s, 'SELECT')", [analyst, contacts])
    assert value("SELECT has_column_privilege(%s, %s, 'email', 'UPDATE')", [analyst, contacts])
    assert not value("SELECT has_column_privilege(%s, %s, 'phone', 'UPDATE')", [analyst, contacts])
    assert value("SELECT obj_description(%s::regclass, 'pg_class')", [contacts]) == "customer contacts (PII)"
    assert value("SELECT col_description(%s::regclass, 4)", [contacts]) == "PII: e-mail address"


def test_a_foreign_key_from_another_schema_the_legacy_side_never_validated_is_carried_not_validated(migrated):
    """NOT VALID: rows that break it were kept on purpose. It was reported as carried, then cutover refused
    it as "an unknown form", naming no way out."""
    db.execute(
        "CREATE TABLE public.deals (id int PRIMARY KEY, contact_id bigint); "
        "INSERT INTO public.deals VALUES (1, 1), (2, 999999); "  # 999999: no such contact
        "ALTER TABLE public.deals ADD CONSTRAINT deals_contact_fk FOREIGN KEY (contact_id) "
        "REFERENCES tenant_acme_0001.contacts (id) NOT VALID"
    )

    cut_over()

    carried = db.fetchone(
        "SELECT confrelid::regclass::text, convalidated FROM pg_constraint WHERE conname = %s", ["deals_contact_fk"]
    )
    assert carried == (f"{ACME}.contact_data_contacts", False)
    with pytest.raises(IntegrityError), transaction.atomic():  # still enforced for new rows
        db.execute("INSERT INTO public.deals VALUES (3, 888888)")
    assert value("SELECT count(*) FROM public.deals") == 2


def test_cutover_refuses_a_tenant_with_an_undecided_materialized_view_and_changes_nothing_of_it(migrated):
    db.execute("CREATE MATERIALIZED VIEW public.acme_counts AS SELECT count(*) AS n FROM tenant_acme_0001.contacts")

    with pytest.raises(CommandError) as exc:
        cut_over()

    message = str(exc.value)
    assert one_line(message)
    assert "materialized view public.acme_counts on tenant_acme_0001.contacts" in message
    assert "--leave-dependent" in message
    assert {"contacts", "activities"} <= table_names(ACME)  # nothing archived for acme
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state != MigrationState.LIVE
    assert Tenant.objects.get(tenant_id="globex_0002").migration_state == MigrationState.LIVE

    # Decided: it stays with the archived legacy table (frozen rows), on the operator's word.
    run("migrate_phase", "cutover", interactive=False, leave_dependent=["public.acme_*"])
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.LIVE
    assert value("SELECT n FROM public.acme_counts") == 120


def test_cutover_redefines_views_functions_and_rules_over_the_new_tables(migrated):
    db.execute(
        "CREATE VIEW public.acme_contacts AS SELECT c.id, c.email, a.n FROM tenant_acme_0001.contacts c "
        "LEFT JOIN (SELECT contact_id, count(*) AS n FROM tenant_acme_0001.activities GROUP BY contact_id) a "
        "ON a.contact_id = c.id; "
        "CREATE VIEW public.acme_emails AS SELECT contacts.email FROM tenant_acme_0001.contacts; "
        "CREATE FUNCTION public.acme_contact_count() RETURNS bigint LANGUAGE sql "
        "BEGIN ATOMIC SELECT count(*) FROM tenant_acme_0001.contacts; END; "
        "CREATE RULE keep_activities AS ON DELETE TO tenant_acme_0001.activities DO INSTEAD NOTHING"
    )

    cut_over()

    new_id = value(
        sql.SQL("INSERT INTO {} (email, created_at) VALUES ('new@example.com', now()) RETURNING id").format(
            NEW_CONTACTS
        )
    )
    assert value("SELECT count(*) FROM public.acme_contacts WHERE id = %s", [new_id]) == 1
    assert value("SELECT count(*) FROM public.acme_emails WHERE email = 'new@example.com'") == 1
    assert value("SELECT public.acme_contact_count()") == count(ACME, "contact_data_contacts")
    before = count(ACME, "activity_data_activities")
    db.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(ACME, "activity_data_activities")))  # the rule: nothing
    assert count(ACME, "activity_data_activities") == before


def test_drop_legacy_never_cascades(migrated):
    add_invoices()
    db.execute("CREATE VIEW public.acme_contacts AS SELECT id, email FROM tenant_acme_0001.contacts")

    with pytest.raises(CommandError) as exc:
        cut_over(drop_legacy=True, leave_dependent=["public.acme_contacts"])

    assert "--drop-legacy would drop: view public.acme_contacts" in str(exc.value)
    assert catalog.table_exists(ACME, "contacts")
    assert value("SELECT count(*) FROM public.acme_contacts") == 120

    db.execute("DROP VIEW public.acme_contacts")
    run("migrate_phase", "cutover", interactive=False, drop_legacy=True)

    assert not catalog.table_exists(ACME, "contacts")
    # The other service's invoices and their foreign key survive, now on the new table.
    assert value("SELECT count(*) FROM billing.invoices") == 5
    assert (
        value("SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'invoices_contact_id_fkey'")
        == f"{ACME}.contact_data_contacts"
    )


def test_cutover_carries_triggers_row_level_security_and_publications(migrated, analyst):
    db.execute(
        "CREATE TABLE public.audit (contact_id bigint, at timestamptz DEFAULT now()); "
        "CREATE FUNCTION public.audit_contact() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO public.audit (contact_id) VALUES (NEW.id); RETURN NEW; END $$; "
        "CREATE TRIGGER contacts_audit AFTER INSERT ON tenant_acme_0001.contacts "
        "FOR EACH ROW EXECUTE FUNCTION public.audit_contact(); "
        "ALTER TABLE tenant_acme_0001.contacts ENABLE ROW LEVEL SECURITY; "
        "CREATE PUBLICATION warehouse FOR TABLE tenant_acme_0001.contacts"
    )
    db.execute(
        sql.SQL("CREATE POLICY own_rows ON tenant_acme_0001.contacts FOR SELECT TO {} USING (owner_id = 1)").format(
            sql.Identifier(analyst)
        )
    )
    db.execute(sql.SQL("GRANT USAGE ON SCHEMA tenant_acme_0001 TO {}").format(sql.Identifier(analyst)))
    db.execute(sql.SQL("GRANT SELECT ON tenant_acme_0001.contacts TO {}").format(sql.Identifier(analyst)))
    try:
        cut_over()

        new_id = value(sql.SQL("INSERT INTO {} (created_at) VALUES (now()) RETURNING id").format(NEW_CONTACTS))
        assert value("SELECT count(*) FROM public.audit WHERE contact_id = %s", [new_id]) == 1  # the trigger fired
        published = "SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_publication_tables WHERE pubname = %s"
        assert value(published, ["warehouse"]) == ["acme_0001__contacts", "contact_data_contacts"]
        # Row-level security restricts the analyst on the new table as it did on the legacy one.
        with db.connect_like_django("test analyst") as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(analyst)))
            visible = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(ACME, "contact_data_contacts"))
            ).fetchone()[0]  # type: ignore[index]
        assert visible == value(sql.SQL("SELECT count(*) FROM {} WHERE owner_id = 1").format(NEW_CONTACTS))
        assert visible < count(ACME, "contact_data_contacts")
    finally:
        db.execute("DROP PUBLICATION IF EXISTS warehouse")


def online_to_cutover() -> None:
    run("migrate_phase", "data", "--online", interactive=False)
    run("migrate_phase", "security")
    run("migrate_phase", "verify")
    run("migrate_phase", "cutover", interactive=False)


FK_TARGET = "SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'invoices_contact_id_fkey'"
VIEW_READS = (
    "SELECT array_agg(DISTINCT d.refobjid::regclass::text) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
    "WHERE d.classid = 'pg_rewrite'::regclass AND r.ev_class = 'public.acme_emails'::regclass "
    "AND d.refobjid <> 'public.acme_emails'::regclass"
)


def test_online_dependents_stay_on_the_real_legacy_tables_until_finalize_carries_them(schemas_ready):
    add_invoices()
    db.execute("CREATE VIEW public.acme_emails AS SELECT id, email FROM tenant_acme_0001.contacts")
    online_to_cutover()
    # the legacy tables are real and in two-way sync: what depends on them keeps working on them
    assert value(FK_TARGET) == f"{ACME}.contacts"
    assert value(VIEW_READS) == [f"{ACME}.contacts"]
    # a delete on the new side reaches the legacy side, whose foreign key cascades to billing
    contact = value("SELECT min(contact_id) FROM billing.invoices")
    activities = sql.Identifier(ACME, "activity_data_activities")
    db.execute(sql.SQL("DELETE FROM {} WHERE contact_id = %s").format(activities), [contact])
    db.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(ACME, "contact_data_contacts")), [contact])
    assert value("SELECT count(*) FROM billing.invoices") == 4

    run("migrate_phase", "finalize", interactive=False, observe_seconds=0.2)

    assert value(FK_TARGET) == f"{ACME}.contact_data_contacts"
    assert value(VIEW_READS) == [f"{ACME}.contact_data_contacts"]
    finished = latest("finalize/acme_0001/finish_sync/tenant_acme_0001").details
    assert {(d["kind"], d["name"]) for d in finished["dependents_carried"]} == {
        (str(FindingKind.FOREIGN_KEY_FROM), "billing.invoices.invoices_contact_id_fkey"),
        (str(FindingKind.VIEW), "public.acme_emails"),
    }


def test_online_rollback_before_finalize_leaves_dependents_where_they_are(schemas_ready):
    add_invoices()
    db.execute("CREATE VIEW public.acme_emails AS SELECT id, email FROM tenant_acme_0001.contacts")
    online_to_cutover()

    run("migrate_phase", "rollback", interactive=False)

    assert value(FK_TARGET) == f"{ACME}.contacts"
    assert value(VIEW_READS) == [f"{ACME}.contacts"]
    assert value("SELECT count(*) FROM billing.invoices") == 5


def test_a_dependent_of_the_legacy_auth_tables_is_reported_and_refuses_their_cutover_until_decided(seeded):
    db.execute("CREATE VIEW public.active_users AS SELECT id, email FROM salesflow_auth.users WHERE is_active")

    output = run("migrate_phase", "prepare", interactive=False)  # the tenants do not wait for it

    assert "dependent object(s) to decide before cutover" in output
    assert "salesflow_auth): users.public.active_users: view" in output
    run("migrate_phase", "schemas")
    run("migrate_phase", "data")
    with pytest.raises(CommandError) as exc:
        cut_over()
    assert one_line(str(exc.value))
    assert "legacy auth schema salesflow_auth: 1 object(s) depend on legacy tables" in str(exc.value)
    assert catalog.table_exists("salesflow_auth", "users")

    run("migrate_phase", "cutover", interactive=False, leave_dependent=["public.active_users"])
    assert not catalog.table_exists("salesflow_auth", "users")


def test_online_finalize_carries_a_trigger_and_grants_to_the_new_table(schemas_ready, analyst):
    add_grants_and_comments(analyst)
    db.execute(
        "CREATE TABLE public.audit (contact_id bigint); "
        "CREATE FUNCTION public.audit_contact() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO public.audit (contact_id) VALUES (NEW.id); RETURN NEW; END $$; "
        "CREATE TRIGGER contacts_audit AFTER INSERT ON tenant_acme_0001.contacts "
        "FOR EACH ROW EXECUTE FUNCTION public.audit_contact()"
    )
    online_to_cutover()

    # The old application still writes the real legacy table: its trigger runs, for the new side's writes too.
    new_id = value("INSERT INTO tenant_acme_0001.contacts (created_at) VALUES (now()) RETURNING id")
    assert value("SELECT count(*) FROM public.audit WHERE contact_id = %s", [new_id]) == 1
    new_contacts = sql.Identifier(ACME, "contact_data_contacts")
    synced_id = value(sql.SQL("INSERT INTO {} (created_at) VALUES (now()) RETURNING id").format(new_contacts))
    assert value("SELECT count(*) FROM public.audit WHERE contact_id = %s", [synced_id]) == 1

    run("migrate_phase", "finalize", interactive=False, observe_seconds=0.2)

    after_id = value(sql.SQL("INSERT INTO {} (created_at) VALUES (now()) RETURNING id").format(new_contacts))
    assert value("SELECT count(*) FROM public.audit WHERE contact_id = %s", [after_id]) == 1
    contacts = f"{ACME}.contact_data_contacts"
    assert value("SELECT has_table_privilege(%s, %s, 'SELECT')", [analyst, contacts])
    assert value("SELECT obj_description(%s::regclass, 'pg_class')", [contacts]) == "customer contacts (PII)"


def test_a_role_granted_on_a_reference_table_is_left_there_alone_and_its_other_grants_carried(seeded, analyst):
    for table in ("contacts", "contact_types"):
        db.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(ACME, table), sql.Identifier(analyst)))
    refused = json.loads(run("migrate_phase", "prepare", plan=True, format="json"))["drift"]
    advice = next(g["action"] for g in refused if g["object"] == analyst and g["table"] == "contact_types")
    assert f"--leave-dependent 'contact_types.{analyst}'" in advice  # not the role's name alone

    # The role's name alone names its grant on contacts too: the report says it stays, as cutover does.
    everywhere = json.loads(run("migrate_phase", "prepare", plan=True, format="json", leave_dependent=[analyst]))
    assert {g["table"]: g["disposition"] for g in everywhere["drift"] if g["object"] == analyst} == {
        "contacts": Disposition.DECIDED,
        "contact_types": Disposition.DECIDED,
    }

    leave = [f"contact_types.{analyst}"]
    report = json.loads(run("migrate_phase", "prepare", plan=True, format="json", leave_dependent=leave))["drift"]
    assert {g["table"]: g["disposition"] for g in report if g["object"] == analyst} == {
        "contacts": Disposition.CARRIED,
        "contact_types": Disposition.DECIDED,
    }
    run("migrate_phase", "prepare", interactive=False, leave_dependent=leave)
    run("migrate_phase", "schemas", interactive=False)
    run("migrate_phase", "data", interactive=False)
    cut_over(leave_dependent=leave)

    granted = "SELECT has_table_privilege(%s, %s, 'SELECT')"
    assert db.fetchvalue(granted, [analyst, f"{ACME}.contact_data_contacts"]) is True
    archived = sql.Identifier(get_config().archive_schema, archive_table_name("acme_0001", "contact_types"))
    assert db.fetchvalue(granted, [analyst, archived.as_string()]) is True


def test_the_access_of_the_role_that_owns_a_tenants_tables_is_carried_to_the_new_ones(seeded, analyst):
    """The application created its tables (it owns them); the migrator's login owns the new ones."""
    role = sql.Identifier(analyst)
    try:
        for table in ("contacts", "activities", "contact_types"):
            db.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(ACME, table), role))
        report = json.loads(run("migrate_phase", "prepare", plan=True, format="json"))["drift"]
        owner = {g["table"]: (g["kind"], g["disposition"]) for g in report if g["object"] == analyst}
        # the reference table's owner holds no tenant back: its grant on the shared table would open all tenants
        assert owner == {
            "contacts": (FindingKind.GRANT, Disposition.CARRIED),
            "activities": (FindingKind.GRANT, Disposition.CARRIED),
        }
        for phase in ("prepare", "schemas", "data"):
            run("migrate_phase", phase, interactive=False)
        cut_over()

        for new_table in ("contact_data_contacts", "activity_data_activities"):
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                assert value("SELECT has_table_privilege(%s, %s, %s)", [analyst, f"{ACME}.{new_table}", privilege]), (
                    new_table,
                    privilege,
                )
        assert Tenant.objects.get(schema_name=ACME).migration_state == MigrationState.LIVE
    finally:
        db.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(role))
