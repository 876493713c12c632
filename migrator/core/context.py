"""Everything a phase needs to know about the run it is part of."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from migrator.core.errors import MigrationError
from migrator.config import MigratorConfig
from salesflow.layout import TENANT_ID_RE, tenant_schema_name


@dataclass(frozen=True)
class TenantRef:
    tenant_id: str

    @property
    def schema(self) -> str:
        return tenant_schema_name(self.tenant_id)


def validate_tenant_ids(tenant_ids: list[str]) -> tuple[str, ...]:
    for tenant_id in tenant_ids:
        if not TENANT_ID_RE.match(tenant_id):
            raise MigrationError(
                f"invalid tenant id {tenant_id!r}: tenant ids match ^[a-z][a-z0-9_]{{0,55}}$ "
                "(pass the id without the tenant_ prefix)"
            )
    return tuple(dict.fromkeys(tenant_ids))


@dataclass
class MigrationContext:
    config: MigratorConfig
    tenant_filter: tuple[str, ...] = ()
    batch_size: int = 50_000
    jobs: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    confirm: Callable[[str], bool] = lambda question: False

    @cached_property
    def registered_tenants(self) -> list[TenantRef]:
        """Registered legacy tenants, narrowed by ``--tenant``; an unknown ``--tenant`` is an error.

        Tenants created new in the target layout (state NEW) have nothing to migrate and are left out.
        """
        from tenants.models import MigrationState, Tenant

        states = dict(Tenant.objects.order_by("tenant_id").values_list("tenant_id", "migration_state"))
        if not self.tenant_filter:
            return [TenantRef(t) for t, state in states.items() if state != MigrationState.NEW]
        for tenant_id in self.tenant_filter:
            if tenant_id not in states:
                raise MigrationError(
                    f"unknown tenant {tenant_id!r}: not in public.tenants "
                    "(run `migrate_phase prepare` to register legacy tenants, or check the id)"
                )
            if states[tenant_id] == MigrationState.NEW:
                raise MigrationError(f"tenant {tenant_id!r} was created in the target layout; it has nothing to migrate")
        return [TenantRef(t) for t in self.tenant_filter]

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)
