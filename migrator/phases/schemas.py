"""Phase 2 — service schemas and every tenant's namespaced tables, through Django migrations."""

from __future__ import annotations

import threading

from django.db import transaction

from migrator import catalog, db
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.details import MigrationsAppliedDetails
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.django_migrations import (
    TenantTemplate,
    build_tenant_template,
    migrate_schema,
    pending_sql,
    pending_sql_of_schemas,
)
from migrator.ops import verification
from migrator.tables import TENANT_DATA_TABLES, service_tables
from tenants.models import MigrationState

# Tenant schemas replayed per transaction: enough to spread the commit over many schemas, few enough that
# the locks one transaction holds (~52 per schema, measured: tables, indexes, sequences, types) stay far
# below the shared lock table (max_locks_per_transaction x max_connections, 6,400 by default), with
# --jobs transactions open at once and other sessions using it too.
SCHEMAS_PER_TRANSACTION = 10


class SchemasPhase(Phase):
    name = "schemas"
    number = 2
    alters_tables = True
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
        pending = pending_sql_of_schemas([t.schema for t in ctx.registered_tenants]) if with_sql else {}
        for tenant in ctx.registered_tenants:
            steps.append(
                self.tenant_step(
                    "tenant_tables",
                    f"Create {', '.join(t.table for t in TENANT_DATA_TABLES)} in {tenant.schema} (tenant migrations)",
                    tenant,
                    sql=tuple(pending.get(tenant.schema, ())),
                )
            )
        return steps

    def step_kinds(self) -> dict[str, StepKind]:
        return {
            "service_schemas": StepKind(self._create_service_schemas, self._check_service_schemas),
            "tenant_tables": StepKind(
                self._create_tenant_tables,
                self._check_tenant_tables,
                apply_batch=self._create_tenant_tables_batch,
                batch_size=SCHEMAS_PER_TRANSACTION,
            ),
        }

    def __init__(self) -> None:
        # The tenant template of the run this phase object serves (the command makes one per run),
        # built by the first batch that needs it; the lock makes the --jobs threads build it once.
        self._template_lock = threading.Lock()
        self._template: tuple[MigrationContext, TenantTemplate | None] | None = None

    def _tenant_template(self, ctx: MigrationContext) -> TenantTemplate | None:
        """The template of this run, built once (the tenant migrations may differ from the last run's)."""
        with self._template_lock:
            if self._template is None or self._template[0] is not ctx:
                self._template = (ctx, build_tenant_template())
            return self._template[1]

    def _create_tenant_tables_batch(self, ctx: MigrationContext, steps: list[Step]) -> dict[str, StepResult]:
        """Replay the template into the schemas of ``steps`` that hold none of its tables yet, in one
        transaction; returns their results. The others (half built by hand, already migrated, missing)
        are left to ``_create_tenant_tables``, which runs the migrations themselves."""
        template = self._tenant_template(ctx)
        if template is None:
            return {}
        by_schema = {TenantRef(step.tenant_id or "").schema: step for step in steps}
        # Looked up by qualified name (an index lookup each): a scan of pg_class, which grows with the
        # tenants, per batch would make the phase quadratic in the tenant count.
        clean = db.fetchall(
            "SELECT s FROM unnest(%s::text[]) s WHERE EXISTS (SELECT FROM pg_namespace WHERE nspname = s) "
            "AND NOT EXISTS (SELECT FROM unnest(%s::text[]) t WHERE to_regclass(format('%%I.%%I', s, t)) IS NOT NULL)",
            [list(by_schema), sorted(template.tables)],
        )
        schemas = [row[0] for row in clean]
        if not schemas:
            return {}
        with transaction.atomic():
            db.execute("".join(template.replay_sql(schema) for schema in schemas))
        applied = [f"{app}.{name}" for app, name in template.migrations]
        return {by_schema[schema].key: self._applied(applied) for schema in schemas}

    @staticmethod
    def _applied(applied: list[str]) -> StepResult:
        return StepResult(
            message=f"{len(applied)} migrations applied" if applied else "already up to date",
            details=MigrationsAppliedDetails(applied=applied),
        )

    def _create_service_schemas(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        return self._applied(migrate_schema("public"))

    def _create_tenant_tables(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        done = self._create_tenant_tables_batch(ctx, [step])
        if step.key in done:
            return done[step.key]
        tenant = TenantRef(step.tenant_id or "")
        if not catalog.schema_exists(tenant.schema):  # Django's own error names no schema
            raise MigrationError(
                f"tenant {tenant.tenant_id} is registered but its schema {tenant.schema} no longer exists (dropped "
                f"since phase 1): restore it (its legacy tables are in phase 1's backup), or leave the tenant out "
                f"with --skip-schema {tenant.schema}"
            )
        return self._applied(migrate_schema(tenant.schema))

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
        return [f"{schema}.{table} does not exist" for table in verification.missing_tenant_tables([schema])[schema]]
