from typing import Any

from django.apps import AppConfig


class MigratorAppConfig(AppConfig):
    name = "migrator"
    verbose_name = "Schema migration"

    def ready(self) -> None:
        from django_tenants.signals import post_schema_sync, schema_migrated

        from tenants.signals import tenant_schemas_migrated

        # A tenant created after the migration (or a table a later tenant migration adds) must be
        # reachable by its services' roles like the migrated ones.
        schema_migrated.connect(grant_after_schema_migration, dispatch_uid="migrator.grants.schema_migrated")
        post_schema_sync.connect(grant_after_tenant_created, dispatch_uid="migrator.grants.post_schema_sync")
        # A deploy's failed schemas, for `migrate_phase status` and its deploy gate.
        tenant_schemas_migrated.connect(record_deploy, dispatch_uid="migrator.tracking.tenant_schemas_migrated")


def grant_after_schema_migration(sender: Any, schema_name: str, **kwargs: Any) -> None:
    from migrator.config import get_config
    from migrator.ops import grants
    from migrator.phases.security import SecurityPhase

    grants.grant_after_schema_migration(get_config(), schema_name, SecurityPhase.SERVICE_ROLE)


def grant_after_tenant_created(sender: Any, tenant: Any, **kwargs: Any) -> None:
    from migrator.config import get_config
    from migrator.ops import grants
    from migrator.phases.security import SecurityPhase

    grants.grant_after_schema_migration(get_config(), tenant.schema_name, SecurityPhase.SERVICE_ROLE)


def record_deploy(sender: Any, schemas: int, failed: dict[str, str], **kwargs: Any) -> None:
    from migrator.engine import orchestration, tracking

    if orchestration.tracking_ready():  # a first deploy before the migrator's tables exist: nothing to record
        tracking.record_deploy(schemas, failed)
