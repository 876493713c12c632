"""salesflow.db_backend: migrations, introspection and flush on service tables (``schema"."table``).

Operations run against a ProjectState the way Django's own schema tests do, so no migration files
are added to the apps. Every check reads the catalog with the schema named explicitly, never
through the search path (django-tenants pins it to ``public``, where service tables are not).
The non-transactional tests' DDL is rolled back with their transaction.
"""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connection, migrations, models
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState

from migrator.tables import service_tables
from salesflow.contact.models import ContactType
from salesflow.db_backend.migration_operations import CreateSchema
from salesflow.layout import service_db_table

CONTACT_TYPES = service_db_table("contact", "contact_types")


# --- helpers -----------------------------------------------------------------------------------


def project_state() -> ProjectState:
    return ProjectState.from_apps(apps)


def forwards(app_label: str, operation: Operation, state: ProjectState) -> ProjectState:
    """Apply ``operation`` to the database; return the state after it."""
    new_state = state.clone()
    operation.state_forwards(app_label, new_state)
    with connection.schema_editor() as editor:
        operation.database_forwards(app_label, editor, state, new_state)
    return new_state


def backwards(app_label: str, operation: Operation, before: ProjectState, after: ProjectState) -> None:
    """Reverse ``operation``, which took the database from ``before`` to ``after``."""
    with connection.schema_editor() as editor:
        operation.database_backwards(app_label, editor, after, before)


def indexes(schema: str, table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s", [schema, table])
        return {row[0] for row in cursor.fetchall()}


def constraints(schema: str, table: str, contype: str) -> dict[str, list[str]]:
    """``{name: [columns]}`` of the table's constraints of one kind (p, u, f, c)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT con.conname, array(
                SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
                JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.ord)
            FROM pg_constraint con
            JOIN pg_class c ON c.oid = con.conrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s AND con.contype = %s
            """,
            [schema, table, contype],
        )
        return dict(cursor.fetchall())


def tables(schema: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema])
        return {row[0] for row in cursor.fetchall()}


# --- indexes -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_add_index_and_remove_index_on_service_table():
    index = models.Index(fields=["name"], name="contact_types_name_test_idx")
    add = migrations.AddIndex("contacttype", index)
    remove = migrations.RemoveIndex("contacttype", index.name)

    state0 = project_state()
    state1 = forwards("contact", add, state0)
    assert index.name in indexes("contact", "contact_types")
    state2 = forwards("contact", remove, state1)
    assert index.name not in indexes("contact", "contact_types")

    backwards("contact", remove, state1, state2)
    assert index.name in indexes("contact", "contact_types")
    backwards("contact", add, state0, state1)
    assert index.name not in indexes("contact", "contact_types")


@pytest.mark.django_db
def test_alter_field_adds_and_removes_db_index_on_service_table():
    baseline = indexes("contact", "contact_types")
    add = migrations.AlterField("contacttype", "name", models.TextField(db_index=True))
    remove = migrations.AlterField("contacttype", "name", models.TextField())

    state0 = project_state()
    state1 = forwards("contact", add, state0)
    added = indexes("contact", "contact_types") - baseline
    # The plain index and PostgreSQL's text_pattern_ops "_like" index.
    assert len(added) == 2
    assert any(name.endswith("_like") for name in added)
    state2 = forwards("contact", remove, state1)
    assert indexes("contact", "contact_types") == baseline

    backwards("contact", remove, state1, state2)
    assert indexes("contact", "contact_types") - baseline == added
    backwards("contact", add, state0, state1)
    assert indexes("contact", "contact_types") == baseline


@pytest.mark.django_db
def test_rename_index_on_service_table():
    index = models.Index(fields=["name"], name="contact_types_name_old_idx")
    add = migrations.AddIndex("contacttype", index)
    rename = migrations.RenameIndex("contacttype", new_name="contact_types_name_new_idx", old_name=index.name)

    state0 = project_state()
    state1 = forwards("contact", add, state0)
    state2 = forwards("contact", rename, state1)
    assert {"contact_types_name_new_idx"} <= indexes("contact", "contact_types")
    assert index.name not in indexes("contact", "contact_types")

    backwards("contact", rename, state1, state2)
    assert index.name in indexes("contact", "contact_types")
    assert "contact_types_name_new_idx" not in indexes("contact", "contact_types")
    backwards("contact", add, state0, state1)
    assert index.name not in indexes("contact", "contact_types")


@pytest.mark.django_db
def test_rename_unnamed_index_on_service_table():
    """RenameIndex(old_fields=...) finds the index by introspection, then renames it."""
    add = migrations.AlterField("user", "created_at", models.DateTimeField(db_index=True))
    rename = migrations.RenameIndex("user", new_name="users_created_at_test_idx", old_fields=("created_at",))
    baseline = indexes("auth", "users")

    state0 = project_state()
    state1 = forwards("accounts", add, state0)
    (unnamed,) = indexes("auth", "users") - baseline
    forwards("accounts", rename, state1)
    assert indexes("auth", "users") - baseline == {"users_created_at_test_idx"}
    assert unnamed not in indexes("auth", "users")


@pytest.mark.django_db(transaction=True)
def test_add_and_remove_index_concurrently_on_service_table():
    """CONCURRENTLY cannot run in a transaction, so this test commits and cleans up after itself."""
    index = models.Index(fields=["name"], name="contact_types_name_conc_idx")
    add = AddIndexConcurrently("contacttype", index)
    remove = RemoveIndexConcurrently("contacttype", index.name)
    try:
        state0 = project_state()
        state1 = state0.clone()
        add.state_forwards("contact", state1)
        state2 = state1.clone()
        remove.state_forwards("contact", state2)
        with connection.schema_editor(atomic=False) as editor:
            add.database_forwards("contact", editor, state0, state1)
        assert index.name in indexes("contact", "contact_types")
        with connection.schema_editor(atomic=False) as editor:
            remove.database_forwards("contact", editor, state1, state2)
        assert index.name not in indexes("contact", "contact_types")
        with connection.schema_editor(atomic=False) as editor:
            remove.database_backwards("contact", editor, state2, state1)
        assert index.name in indexes("contact", "contact_types")
        with connection.schema_editor(atomic=False) as editor:
            add.database_backwards("contact", editor, state1, state0)
        assert index.name not in indexes("contact", "contact_types")
    finally:
        with connection.cursor() as cursor:
            cursor.execute('DROP INDEX IF EXISTS "contact"."contact_types_name_conc_idx"')


# --- unique ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_alter_field_adds_and_removes_unique_on_service_table():
    baseline_indexes = indexes("contact", "contact_types")
    add = migrations.AlterField("contacttype", "name", models.TextField(unique=True))
    remove = migrations.AlterField("contacttype", "name", models.TextField())

    def unique_on_name() -> list[str]:
        return [name for name, cols in constraints("contact", "contact_types", "u").items() if cols == ["name"]]

    state0 = project_state()
    state1 = forwards("contact", add, state0)
    assert len(unique_on_name()) == 1
    assert any(name.endswith("_like") for name in indexes("contact", "contact_types") - baseline_indexes)
    state2 = forwards("contact", remove, state1)
    assert unique_on_name() == []
    assert indexes("contact", "contact_types") == baseline_indexes

    backwards("contact", remove, state1, state2)
    assert len(unique_on_name()) == 1
    backwards("contact", add, state0, state1)
    assert unique_on_name() == []
    assert indexes("contact", "contact_types") == baseline_indexes


@pytest.mark.django_db
def test_alter_field_drops_and_restores_initial_unique_on_service_table():
    """``code`` was made unique by the initial migration (constraint ``contact_types_code_key``)."""
    drop = migrations.AlterField("contacttype", "code", models.TextField())

    def unique_on_code() -> list[str]:
        return [name for name, cols in constraints("contact", "contact_types", "u").items() if cols == ["code"]]

    assert unique_on_code() == ["contact_types_code_key"]
    state0 = project_state()
    state1 = forwards("contact", drop, state0)
    assert unique_on_code() == []
    backwards("contact", drop, state0, state1)
    assert len(unique_on_code()) == 1


@pytest.mark.django_db
def test_add_and_remove_unique_constraints_on_service_table():
    """A plain UniqueConstraint is a table constraint; a conditional one is a partial unique index."""
    plain = models.UniqueConstraint(fields=["name"], name="contact_types_name_test_uniq")
    partial = models.UniqueConstraint(
        fields=["name"], condition=models.Q(code__startswith="x"), name="contact_types_name_x_test_uniq"
    )
    operations = [
        migrations.AddConstraint("contacttype", plain),
        migrations.AddConstraint("contacttype", partial),
        migrations.RemoveConstraint("contacttype", plain.name),
        migrations.RemoveConstraint("contacttype", partial.name),
    ]

    def present() -> set[str]:
        found = set(constraints("contact", "contact_types", "u")) | indexes("contact", "contact_types")
        return found & {plain.name, partial.name}

    states = [project_state()]
    for operation in operations:
        states.append(forwards("contact", operation, states[-1]))
    expected_after = [{plain.name}, {plain.name, partial.name}, {partial.name}, set()]
    assert present() == expected_after[-1]

    for i in reversed(range(len(operations))):
        backwards("contact", operations[i], states[i], states[i + 1])
        assert present() == ([set(), *expected_after])[i], operations[i].describe()


@pytest.mark.django_db
def test_add_and_remove_unique_together_on_service_table():
    add = migrations.AlterUniqueTogether("user", {("full_name", "created_at")})
    remove = migrations.AlterUniqueTogether("user", set())

    def unique_together() -> list[str]:
        return [n for n, cols in constraints("auth", "users", "u").items() if cols == ["full_name", "created_at"]]

    state0 = project_state()
    state1 = forwards("accounts", add, state0)
    assert len(unique_together()) == 1
    state2 = forwards("accounts", remove, state1)
    assert unique_together() == []

    backwards("accounts", remove, state1, state2)
    assert len(unique_together()) == 1
    backwards("accounts", add, state0, state1)
    assert unique_together() == []


# --- foreign keys ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_drop_and_restore_foreign_key_on_service_table():
    """Dropping an FK runs ``SET CONSTRAINTS <name> IMMEDIATE``, which must name the FK's schema."""
    drop = migrations.AlterField(
        "rolepermission", "role", models.ForeignKey("accounts.Role", models.DB_CASCADE, db_constraint=False)
    )

    def fk_on_role() -> list[str]:
        return [n for n, cols in constraints("auth", "role_permissions", "f").items() if cols == ["role_id"]]

    assert len(fk_on_role()) == 1
    state0 = project_state()
    state1 = forwards("accounts", drop, state0)
    assert fk_on_role() == []
    backwards("accounts", drop, state0, state1)
    assert len(fk_on_role()) == 1


# --- tables ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_alter_model_table_within_and_across_schemas():
    renamed = migrations.AlterModelTable("contacttype", service_db_table("contact", "contact_types") + "_renamed")
    moved = migrations.AlterModelTable("contacttype", 'contact_moved_test"."contact_types')
    create_schema = CreateSchema("contact_moved_test")

    state0 = project_state()
    state1 = forwards("contact", renamed, state0)
    assert "contact_types_renamed" in tables("contact")
    assert "contact_types" not in tables("contact")
    assert "contact_types_pkey" in indexes("contact", "contact_types_renamed")
    backwards("contact", renamed, state0, state1)
    assert "contact_types" in tables("contact")
    assert "contact_types_renamed" not in tables("contact")

    forwards("contact", create_schema, state0)
    state2 = forwards("contact", moved, state0)
    assert tables("contact_moved_test") == {"contact_types"}
    assert "contact_types" not in tables("contact")
    assert "contact_types_code_key" in constraints("contact_moved_test", "contact_types", "u")
    backwards("contact", moved, state0, state2)
    assert tables("contact_moved_test") == set()
    assert "contact_types" in tables("contact")


# --- introspection -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_introspection_of_service_table():
    introspection = connection.introspection
    with connection.cursor() as cursor:
        found = introspection.get_constraints(cursor, CONTACT_TYPES)
        primary_key = introspection.get_primary_key_column(cursor, CONTACT_TYPES)
        columns = [info.name for info in introspection.get_table_description(cursor, CONTACT_TYPES)]
        sequences = introspection.get_sequences(cursor, CONTACT_TYPES)
        role_permission_fks = introspection.get_constraints(cursor, service_db_table("auth", "role_permissions"))
        relations = introspection.get_relations(cursor, service_db_table("auth", "role_permissions"))

    assert any(c["primary_key"] and c["columns"] == ["id"] for c in found.values())
    assert any(c["unique"] and not c["primary_key"] and c["columns"] == ["code"] for c in found.values())
    assert primary_key == "id"
    assert columns == ["id", "code", "name"]
    assert sequences == [{"name": 'contact"."contact_types_id_seq', "table": CONTACT_TYPES, "column": "id"}]
    assert {c["foreign_key"] for c in role_permission_fks.values() if c["foreign_key"]} == {
        ('auth"."roles', "id"),
        ('auth"."permissions', "id"),
    }
    assert relations["role_id"][:2] == ("id", 'auth"."roles')
    assert relations["role_id"][2] is models.DB_CASCADE


@pytest.mark.django_db
def test_flush_includes_service_tables():
    tables = {service_db_table(schema, table) for schema, names in service_tables().items() for table in names}
    existing = set(connection.introspection.django_table_names(only_existing=True, include_views=False))
    assert tables <= existing
    assert tables <= set(connection.introspection.table_names())

    (statement,) = connection.ops.sql_flush(no_style(), sorted(existing))
    assert '"contact"."contact_types"' in statement
    assert '"auth"."users"' in statement


@pytest.mark.django_db
def test_fake_initial_detects_existing_service_tables():
    executor = MigrationExecutor(connection)
    for app_label in ("accounts", "contact", "activity"):
        migration = executor.loader.get_migration(app_label, "0001_initial")
        applied, _ = executor.detect_soft_applied(None, migration)
        assert applied, app_label


@pytest.mark.django_db
def test_makemigrations_reports_no_changes():
    # --check exits with status 1 when the models need a migration the apps do not have.
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


# --- flush between transactional tests ---------------------------------------------------------
# Kept in this order: pytest-django runs transactional tests after the others, in file order, and
# empties the database with `flush` after each one. Before the fix flush skipped service tables, so
# the row written by the first test was still there in the second.


@pytest.mark.django_db(transaction=True)
def test_transactional_test_writes_a_service_row():
    ContactType.objects.create(code="leak-probe", name="written by a transactional test")
    assert ContactType.objects.filter(code="leak-probe").exists()


@pytest.mark.django_db(transaction=True)
def test_next_transactional_test_starts_with_empty_service_table():
    assert ContactType.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_flush_command_empties_service_tables():
    ContactType.objects.create(code="flush-probe", name="removed by flush")
    call_command("flush", interactive=False, verbosity=0)
    assert ContactType.objects.count() == 0
