"""The CreateSchema migration operation with a name the SQL layer could misread."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.state import ProjectState

from migrator import catalog
from salesflow.db_backend.migration_operations import CreateSchema

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("name", ["svc%s", "svc%%x", "svc 100%"])
def test_a_percent_sign_in_the_schema_name_is_created_and_dropped(name):
    operation = CreateSchema(name)
    state = ProjectState()
    try:
        with connection.schema_editor() as editor:
            operation.database_forwards("contact", editor, state, state)
        assert catalog.schema_exists(name)
        with connection.schema_editor() as editor:
            operation.database_backwards("contact", editor, state, state)
        assert not catalog.schema_exists(name)
    finally:
        with connection.cursor() as cursor:
            cursor.execute('DROP SCHEMA IF EXISTS "' + name.replace('"', '""') + '" CASCADE', None)


def test_collected_sql_shows_the_name_as_it_is():
    with connection.schema_editor(collect_sql=True) as editor:
        CreateSchema("svc%s").database_forwards("contact", editor, ProjectState(), ProjectState())
    assert editor.collected_sql == ['CREATE SCHEMA IF NOT EXISTS "svc%s";']
