from typing import Any

from django.apps import AppConfig


class MigratorAppConfig(AppConfig):
    name = "migrator"
    verbose_name = "Schema migration"

    def ready(self) -> None:
        from django_tenants.signals import post_schema_sync, schema_migrated

        # A tenant created after the migration (or a table a later tenant migration adds) must be
        # reachable by its services' roles like the migrated ones.
        schema_migrated.connect(grant_after_schema_migration, dispatch_uid="migrator.grants.schema_migrated")
        post_schema_sync.connect(grant_after_tenant_created, dispatch_uid="migrator.grants.post_schema_sync")


def grant_after_schema_migration(sender: Any, schema_name: str, **kwargs: Any) -> None:
    from migrator.config import get_config
    from migrator.ops import grants

    grants.grant_after_schema_migration(get_config(), schema_name)


def grant_after_tenant_created(sender: Any, tenant: Any, **kwargs: Any) -> None:
    from migrator.config import get_config
    from migrator.ops import grants

    grants.grant_after_schema_migration(get_config(), tenant.schema_name)
