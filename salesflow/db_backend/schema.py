"""Schema editor for tables named ``schema"."table`` (the service tables).

Most DDL names the table, which Django quotes as ``"schema"."table"``, and is right as it is. What
goes wrong is DDL that names an index or constraint *without* its table: PostgreSQL looks that name
up on the search path, which django-tenants pins to ``public`` or the tenant schema, never to the
service schema. ``DROP INDEX IF EXISTS`` then silently does nothing (RemoveIndex, dropping
``db_index``/``unique``, a conditional UniqueConstraint), while ``ALTER INDEX ... RENAME`` and
``SET CONSTRAINTS`` fail. An index or constraint always lives in its table's schema, so those names
are qualified with it. Renaming a table is the one statement the other way round: ``RENAME TO``
takes a bare name.
"""

from __future__ import annotations

from django.db.backends.ddl_references import Statement
from django.db.backends.postgresql.schema import DatabaseSchemaEditor
from django.db.backends.utils import split_identifier
from django.db.models import Model
from psycopg.sql import SQL, Identifier


class QualifiedNameSchemaEditor(DatabaseSchemaEditor):
    # Django's templates plus %(namespace)s, the placeholder Django's own
    # sql_create_column_inline_fk already uses for SET CONSTRAINTS: '"schema".' for a qualified
    # table, '' for a bare one (so tenant and public tables keep resolving via the search path).
    # The new name of RENAME TO stays bare: the index cannot change schema that way.
    sql_delete_index = "DROP INDEX IF EXISTS %(namespace)s%(name)s"
    sql_delete_index_concurrently = "DROP INDEX CONCURRENTLY IF EXISTS %(namespace)s%(name)s"
    sql_rename_index = "ALTER INDEX %(namespace)s%(old_name)s RENAME TO %(new_name)s"
    sql_delete_fk = "SET CONSTRAINTS %(namespace)s%(name)s IMMEDIATE; ALTER TABLE %(table)s DROP CONSTRAINT %(name)s"

    def _namespace(self, db_table: str) -> str:
        schema, _ = split_identifier(db_table)
        return self.quote_name(schema) + "." if schema else ""

    # The three builders every statement above goes through (Index.remove_sql, RemoveIndex,
    # _alter_field, alter_unique_together, UniqueConstraint.remove_sql, RenameIndex, foreign keys).
    def _delete_index_sql(
        self, model: type[Model], name: str, sql: str | None = None, concurrently: bool = False
    ) -> Statement:
        statement = super()._delete_index_sql(model, name, sql, concurrently)  # type: ignore[misc]  # private, not in the stubs
        statement.parts["namespace"] = self._namespace(model._meta.db_table)
        return statement

    def _rename_index_sql(self, model: type[Model], old_name: str, new_name: str) -> Statement:
        statement = super()._rename_index_sql(model, old_name, new_name)  # type: ignore[misc]  # private, not in the stubs
        statement.parts["namespace"] = self._namespace(model._meta.db_table)
        return statement

    def _delete_constraint_sql(self, template: str, model: type[Model], name: str) -> Statement:
        statement = super()._delete_constraint_sql(template, model, name)  # type: ignore[misc]  # private, not in the stubs
        statement.parts["namespace"] = self._namespace(model._meta.db_table)
        return statement

    def alter_db_table(self, model: type[Model], old_db_table: str, new_db_table: str) -> None:
        """Rename and/or move a table when either name is qualified.

        Django's ``ALTER TABLE "s"."a" RENAME TO "s"."b"`` is a syntax error: RENAME TO takes a
        bare name and keeps the schema, and moving to another schema is SET SCHEMA (which takes
        the table's indexes, constraints and owned sequences along). A bare new name means the
        connection's current schema, where django-tenants' search path creates bare tables.
        """
        old_schema, old_table = split_identifier(old_db_table)
        new_schema, new_table = split_identifier(new_db_table)
        if old_db_table == new_db_table or not (old_schema or new_schema):
            super().alter_db_table(model, old_db_table, new_db_table)
            return
        current_schema: str = getattr(self.connection, "schema_name", "public")  # django-tenants' wrapper
        target_schema = new_schema or current_schema
        table = Identifier(old_schema, old_table) if old_schema else Identifier(old_table)
        if (old_schema or current_schema) != target_schema:
            self.execute(
                SQL("ALTER TABLE {} SET SCHEMA {}").format(table, Identifier(target_schema)).as_string(),
                params=None,
            )
            table = Identifier(target_schema, old_table)
        if old_table != new_table:
            self.execute(
                SQL("ALTER TABLE {} RENAME TO {}").format(table, Identifier(new_table)).as_string(),
                params=None,
            )
        # The rest of BaseDatabaseSchemaEditor.alter_db_table: keep later introspection (sqlmigrate)
        # and deferred statements pointing at the renamed table.
        renames: dict[str, str] | None = getattr(self, "collected_table_renames", None)  # Django >= 6.0
        if self.collect_sql and renames is not None:
            renames[new_db_table] = renames.pop(old_db_table, old_db_table)
        for statement in self.deferred_sql:
            if isinstance(statement, Statement):
                statement.rename_table_references(old_db_table, new_db_table)
