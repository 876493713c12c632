from django_tenants.postgresql_backend.introspection import DatabaseSchemaIntrospection


class QualifiedNameIntrospection(DatabaseSchemaIntrospection):
    pass
