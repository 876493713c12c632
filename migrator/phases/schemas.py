"""Phase 2 — service schemas and every tenant's namespaced tables, through Django migrations."""

from __future__ import annotations

from migrator import catalog
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.django_migrations import migrate_schema, pending_sql
from migrator.tables import TENANT_DATA_TABLES, service_tables
from tenants.models import MigrationState


class SchemasPhase(Phase):
    name = "schemas"
    number = 2
    estimate = "2 hours"
    summary = "auth, contact, activity schemas (migrate_schemas --shared) and namespaced tenant tables"
    tenant_state_on_success = MigrationState.SCHEMAS_READY
    requires = "prepare"
    undone_by_rollback = True
    undone_by_restore = True

    def plan(self, ctx: MigrationContext) -> list[Step]:
        with_sql = ctx.options.render_sql
        steps = [
            self.step(
                "service_schemas",
                "Create schemas " + ", ".join(service_tables()) + " and their tables (shared migrations)",
                sql=tuple(pending_sql("public")) if with_sql else (),
            )
        ]
        for tenant in ctx.registered_tenants:
            steps.append(
                self.step(
                    "tenant_tables",
                    f"Create {', '.join(t.table for t in TENANT_DATA_TABLES)} in {tenant.schema} (tenant migrations)",
                    tenant_id=tenant.tenant_id,
                    target=tenant.schema,
                    sql=tuple(pending_sql(tenant.schema)) if with_sql and catalog.schema_exists(tenant.schema) else (),
                )
            )
        return steps

    def step_kinds(self) -> dict[str, StepKind]:
        return {
            "service_schemas": StepKind(self._create_service_schemas, self._check_service_schemas),
            "tenant_tables": StepKind(self._create_tenant_tables, self._check_tenant_tables),
        }

    @staticmethod
    def _applied(applied: list[str]) -> StepResult:
        return StepResult(
            message=f"{len(applied)} migrations applied" if applied else "already up to date",
            details={"applied": applied},
        )

    def _create_service_schemas(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        return self._applied(migrate_schema("public"))

    def _create_tenant_tables(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        return self._applied(migrate_schema(TenantRef(step.tenant_id or "").schema))

    def _check_service_schemas(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        found = catalog.tables_by_schema(list(service_tables()))
        return [
            f"{schema}.{table} does not exist"
            for schema, tables in service_tables().items()
            for table in tables
            if table not in found[schema]
        ]

    def _check_tenant_tables(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        schema = TenantRef(step.tenant_id or "").schema
        found = catalog.tables_by_schema([schema])[schema]
        return [f"{schema}.{t.table} does not exist" for t in TENANT_DATA_TABLES if t.table not in found]
