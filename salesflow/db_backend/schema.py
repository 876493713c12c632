from django.db.backends.postgresql.schema import DatabaseSchemaEditor


class QualifiedNameSchemaEditor(DatabaseSchemaEditor):
    pass
