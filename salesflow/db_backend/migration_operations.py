"""Migration operation that creates a service schema before the service's tables."""

from __future__ import annotations

from typing import Any

from django.db import router
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState
from psycopg import sql


class CreateSchema(Operation):
    """``CREATE SCHEMA IF NOT EXISTS`` on migrate, ``DROP SCHEMA IF EXISTS`` (empty only) on reverse.

    Runs only where the app's tables are created (the public sync, not tenant schemas), as the
    router decides for every other operation of the app.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, name: str) -> None:
        self.name = name

    def deconstruct(self) -> tuple[str, list[str], dict[str, Any]]:
        return self.__class__.__name__, [self.name], {}

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        pass

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if router.allow_migrate(schema_editor.connection.alias, app_label):
            # No parameters: with params the backend would read a % in the name as a placeholder.
            schema_editor.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.name)).as_string(), params=None
            )

    def database_backwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if router.allow_migrate(schema_editor.connection.alias, app_label):
            schema_editor.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(self.name)).as_string(), params=None
            )

    def describe(self) -> str:
        return f"Create schema {self.name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"create_schema_{self.name}"
