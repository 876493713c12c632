"""django-tenants' PostgreSQL backend, taught about service tables in their own schemas."""

from typing import Any

from django_tenants.postgresql_backend.base import DatabaseWrapper as TenantDatabaseWrapper

from salesflow.db_backend.introspection import QualifiedNameIntrospection
from salesflow.db_backend.schema import QualifiedNameSchemaEditor


class DatabaseWrapper(TenantDatabaseWrapper):
    SchemaEditorClass = QualifiedNameSchemaEditor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.introspection = QualifiedNameIntrospection(self)
