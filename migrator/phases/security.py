"""Phase 4 — security: the database side of the plan's "application updates"."""

from __future__ import annotations

import hashlib

from django.db import transaction

from migrator import catalog, db
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.details import TenantGrantsDetails
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.ops import grants
from migrator.ops.tenant_decisions import created_new_schemas
from migrator.step_ref import StepRef
from migrator.tables import TENANT_DATA_TABLES
from salesflow.layout import NAMESPACE_SERVICE
from tenants.models import MigrationState

# Tenants whose grants run in one transaction (the engine's batches): a batch locks each schema's
# few tables and sequences for the GRANTs, about 60 locks for 10 tenants.
TENANTS_PER_TRANSACTION = 10


class SecurityPhase(Phase):
    name = "security"
    number = 4
    estimate = "2-3 days"
    summary = "NOLOGIN service roles with grants on exactly their schemas and tenant tables"
    tenant_state_on_success = MigrationState.SECURED
    requires = "data"
    undone_by_rollback = True
    undone_by_restore = True
    # Read by grants and rollback: the roles phase 4 created, the tenant schemas it granted usage on.
    SERVICE_ROLE = StepRef(name, "service_role")
    TENANT_GRANTS = StepRef(name, "tenant_grants")
    NEW_TENANT_GRANTS = StepRef(name, "new_tenant_grants")

    def refuse_options(self, ctx: MigrationContext) -> None:
        grants.refuse_another_role_prefix(ctx.config, self.SERVICE_ROLE)

    def plan(self, ctx: MigrationContext) -> list[Step]:
        steps = [
            self.step(
                self.SERVICE_ROLE.kind,
                f"Role {role} (NOLOGIN): usage and DML on schema {service}, its sequences "
                "and future tables; nothing in public",
                target=role,
                sql=tuple(db.render(s) for s in grants.service_schema_statements(role, service))
                if ctx.options.render_sql
                else (),
            )
            for service, role in ctx.config.service_roles.items()
        ]
        if not ctx.tenant_filter and (created := created_new_schemas()):
            # The application's tenants made before this phase: the grant its deploys give a new tenant's
            # tables waited for the roles. Keyed by their names, so a tenant made since is granted by a rerun.
            steps.append(
                self.step(
                    self.NEW_TENANT_GRANTS.kind,
                    f"Grant the tables of {len(created)} tenants created in the target layout ({created[0]}, ...) "
                    "to their services' roles",
                    target=f"{len(created)} new tenants {hashlib.sha1(' '.join(created).encode()).hexdigest()[:12]}",
                )
            )
        for tenant in ctx.registered_tenants:
            steps.append(
                self.tenant_step(
                    self.TENANT_GRANTS.kind,
                    f"Grant {', '.join(t.table for t in TENANT_DATA_TABLES)} in {tenant.schema} to their "
                    "services' roles only",
                    tenant,
                )
            )
        return steps

    def step_kinds(self) -> dict[str, StepKind]:
        return {
            self.SERVICE_ROLE.kind: StepKind(self._create_service_role, self._check_service_role),
            self.NEW_TENANT_GRANTS.kind: StepKind(self._grant_new_tenants, rerunnable=True),
            self.TENANT_GRANTS.kind: StepKind(
                self._grant_tenant_tables,
                self._check_tenant_grants,
                apply_batch=self._grant_tenant_tables_batch,
                batch_size=TENANTS_PER_TRANSACTION,
                rerunnable=True,  # grants reach the same end state when given again
            ),
        }

    def _create_service_role(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        role = step.target.name
        service = next(s for s, r in ctx.config.service_roles.items() if r == role)
        if not catalog.schema_exists(service):
            raise MigrationError(f"schema {service} does not exist; run `migrate_phase schemas` first")
        claimed = grants.claim_service_role(role, adopt=ctx.options.adopt_roles, role_step=self.SERVICE_ROLE)
        tables = grants.grant_service_schema(role, service)
        how = "adopted" if claimed["adopted"] else "created"
        return StepResult(message=f"{how}; {tables} tables in {service}", details=claimed)

    def _grant_new_tenants(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        created = created_new_schemas()
        granted = sum(len(grants.grant_after_schema_migration(ctx.config, s, self.SERVICE_ROLE)) for s in created)
        return StepResult(message=f"{granted} grants on the tables of {len(created)} tenants")

    def _grant_tenant_tables(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        return self._grant_tenant_tables_batch(ctx, [step])[step.key]

    def _grant_tenant_tables_batch(self, ctx: MigrationContext, steps: list[Step]) -> dict[str, StepResult]:
        """The grants of several tenants in one transaction: one query for the roles, one for the
        schemas' current USAGE grants, one for their tables and sequences, one batch of GRANTs."""
        missing_roles = catalog.missing_roles(list(ctx.config.service_roles.values()))
        if missing_roles:
            raise MigrationError(
                f"role {missing_roles[0]} does not exist; run `migrate_phase security` without --tenant first"
            )
        roles = [ctx.config.service_role(s) for s in NAMESPACE_SERVICE.values()]
        schemas = {step.key: TenantRef(step.tenant_id or "").schema for step in steps}
        with transaction.atomic():
            # Rollback revokes USAGE on the tenant schema only from roles that did not have it before.
            had_usage = catalog.roles_with_usage_granted_by_schema(roles, list(schemas.values()))
            given = grants.grant_tenant_tables_of(list(schemas.values()), ctx.config)
        results = {}
        for key, schema in schemas.items():
            results[key] = StepResult(
                message=", ".join(f"{g.table} -> {g.role}" for g in given[schema]),
                details=TenantGrantsDetails(
                    usage_granted=sorted({g.role for g in given[schema]} - set(had_usage[schema]))
                ),
            )
        return results

    def _check_service_role(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        return grants.privilege_problems(ctx.config, [], roles=[step.target.name])

    def _check_tenant_grants(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        # Nothing in public is checked by the service_role steps: a tenant's grants cannot change it.
        return grants.privilege_problems(
            ctx.config, [TenantRef(step.tenant_id or "").schema], service_tables=False, public=False
        )
