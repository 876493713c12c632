"""Phase 5 — verification: the plan's queries, counts, isolation, index use, CRUD through the ORM."""

from __future__ import annotations

from collections.abc import Callable

from migrator import db
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.phase import ApplyStep, Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.engine.orchestration import free_connections
from migrator.models import MigrationRecord, Status
from migrator.ops import grants, load_test, verification
from migrator.phases import online
from migrator.tables import TENANT_DATA_TABLES, service_tables
from salesflow.layout import NAMESPACE_SERVICE
from tenants.models import MigrationState, Tenant

CheckResult = tuple[list[str], dict[str, object]]
Check = Callable[[MigrationContext, Step], CheckResult]

TENANT_CHECKS = {
    "tenant_tables": "Namespaced tables exist in {schema} (catalog)",
    "counts_match": "Row counts of {schema}'s namespaced tables equal those validated in phase 3",
    "isolation": "In {schema}'s ORM context only its own rows are visible; each service role is refused "
    "the other service's table",
    "index_usage": "EXPLAIN of contact by email, activities by contact and by due date uses an index",
    "crud_smoke": "Create, read, update, delete a contact and an activity through the ORM (rolled back)",
}


def new_tenant_schemas() -> list[str]:
    return list(
        Tenant.objects.filter(migration_state=MigrationState.NEW)
        .order_by("tenant_id")
        .values_list("schema_name", flat=True)
    )


class VerifyPhase(Phase):
    name = "verify"
    number = 5
    estimate = "2-3 days"
    summary = "verification queries, row counts, tenant and service isolation, index use, CRUD smoke test"
    tenant_state_on_success = MigrationState.VERIFIED
    requires = "security"
    tenant_steps_rerunnable = True
    undone_by_rollback = True
    undone_by_restore = True
    continue_after_failure = True

    def plan(self, ctx: MigrationContext) -> list[Step]:
        steps = [
            self.step(
                "expected_schemas",
                "The plan's verification queries: expected schemas and service tables "
                "exist, no service table in public",
                sql=(verification.PLAN_SCHEMA_QUERY,),
            ),
            self.step(
                "row_counts",
                "Contacts and activities per tenant (a working version of the plan's count query)",
                sql=(verification.COUNT_FUNCTION, db.render(verification.row_counts_query())),
            ),
            self.step(
                "role_isolation", "Each service role reads its own service schema and is refused the others' (SET ROLE)"
            ),
        ]
        if not ctx.tenant_filter:
            # Tenants created in the target layout have nothing to migrate, but the same grants to check.
            steps += [
                self.step(
                    "new_tenant",
                    f"Namespaced tables of {schema} (a tenant created in the target "
                    "layout) exist and carry exactly their services' grants",
                    target=schema,
                )
                for schema in new_tenant_schemas()
            ]
        for tenant in ctx.registered_tenants:
            for kind, description in TENANT_CHECKS.items():
                steps.append(self.step(kind, description.format(schema=tenant.schema), tenant_id=tenant.tenant_id))
        if ctx.registered_tenants:
            # Phase-wide, after the tenant checks (the runner keeps plan order between the two).
            steps.append(
                self.step(
                    "load_test",
                    f"{ctx.options.load_clients} connections run the key queries "
                    f"(contact by email, a contact's activities, upcoming activities, a contact insert "
                    f"and update, rolled back) for at most {ctx.options.load_seconds:g} s, each on the "
                    "legacy tables and then with the same key on the new ones through the service "
                    "roles; the new p95 may be at "
                    f"most {ctx.options.load_max_regression:g} % worse",
                )
            )
        return steps

    def step_kinds(self) -> dict[str, StepKind]:
        checks: dict[str, Check] = {
            "expected_schemas": self._expected_schemas,
            "row_counts": self._row_counts,
            "role_isolation": self._role_isolation,
            "tenant_tables": self._tenant_tables,
            "counts_match": self._counts_match,
            "isolation": self._tenant_isolation,
            "index_usage": self._index_usage,
            "crud_smoke": self._crud_smoke,
            "new_tenant": self._new_tenant,
            "load_test": self._load_test,
        }
        return {kind: StepKind(self._recording(check), self._problems_found) for kind, check in checks.items()}

    def _recording(self, check: Check) -> ApplyStep:
        """A check's problems go on the step's record (verify keeps going and reports them all)."""

        def apply(ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
            problems, details = check(ctx, step)
            message = "; ".join(problems) if problems else self._summary(step, details)
            return StepResult(message=message, details={**details, "problems": problems})

        return apply

    @staticmethod
    def _problems_found(ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        return list(result.details.get("problems", []))

    def _expected_schemas(self, ctx: MigrationContext, step: Step) -> CheckResult:
        return verification.schema_problems([t.schema for t in ctx.registered_tenants])

    def _row_counts(self, ctx: MigrationContext, step: Step) -> CheckResult:
        tenants = ctx.registered_tenants
        counts = verification.row_counts([t.tenant_id for t in tenants])
        missing = [t.tenant_id for t in tenants if t.tenant_id not in counts]
        return [f"tenant {t} is not registered" for t in missing], {"counts": counts}

    def _role_isolation(self, ctx: MigrationContext, step: Step) -> CheckResult:
        objects = [(schema, schema, table) for schema, tables in service_tables().items() for table in tables]
        return verification.role_isolation_problems(ctx.config, objects), {}

    @staticmethod
    def _summary(step: Step, details: dict[str, object]) -> str:
        counts = details.get("counts")
        if step.kind == "row_counts" and isinstance(counts, dict):
            names = [t.legacy_table for t in TENANT_DATA_TABLES]
            return f"{len(counts)} tenants: " + ", ".join(f"{sum(c[n] for c in counts.values())} {n}" for n in names)
        if step.kind == "counts_match" and isinstance(counts, dict):
            return (
                ", ".join(f"{t.legacy_table} {counts.get(t.legacy_table)}" for t in TENANT_DATA_TABLES)
                + " as validated"
            )
        load = details.get("load_test")
        if step.kind == "load_test" and isinstance(load, dict):
            return load_summary(load)
        if step.kind == "index_usage":
            return f"{len(details.get('index_used', {}))} key lookups served by an index"  # type: ignore[arg-type]
        return {
            "expected_schemas": "schemas and service tables as planned",
            "role_isolation": "each role reads only its own service schema",
            "tenant_tables": "namespaced tables present",
            "isolation": "own rows only; other service refused",
            "crud_smoke": "create, read, update, delete OK (rolled back)",
            "new_tenant": "tables present; grants as planned",
        }.get(step.kind, "OK")

    def _tenant_tables(self, ctx: MigrationContext, step: Step) -> CheckResult:
        return verification.tenant_table_problems(TenantRef(step.tenant_id or "").schema), {}

    def _counts_match(self, ctx: MigrationContext, step: Step) -> CheckResult:
        tenant = TenantRef(step.tenant_id or "")
        counts = verification.row_counts([tenant.tenant_id]).get(tenant.tenant_id, {})
        validated = dict(
            MigrationRecord.objects.filter(
                phase="data",
                step="validate",
                tenant_id=tenant.tenant_id,
            )
            .latest_attempts()
            .filter(status=Status.COMPLETED)
            .values_list("target", "rows_expected")
        )
        problems = []
        writes_go_on = online.is_online(tenant.schema)  # data --online: counts move; cutover compares content
        for table, key in ((t.table, t.legacy_table) for t in TENANT_DATA_TABLES):
            if table not in validated:
                problems.append(f"{table} has no completed validation in phase 3")
            elif validated[table] != counts.get(key) and not writes_go_on:
                problems.append(f"{table} holds {counts.get(key)} rows, phase 3 validated {validated[table]}")
        return problems, {"counts": counts}

    def _tenant_isolation(self, ctx: MigrationContext, step: Step) -> CheckResult:
        tenant = TenantRef(step.tenant_id or "")
        others = [t.schema for t in ctx.registered_tenants if t.tenant_id != tenant.tenant_id]
        problems, seen = verification.tenant_context_problems(tenant.schema, others)
        objects = [(NAMESPACE_SERVICE[t.namespace], tenant.schema, t.table) for t in TENANT_DATA_TABLES]
        problems += verification.role_isolation_problems(ctx.config, objects)
        return problems, {"orm_counts": seen}

    def _new_tenant(self, ctx: MigrationContext, step: Step) -> CheckResult:
        schema = step.target
        problems = verification.tenant_table_problems(schema)
        if not problems:
            problems = grants.privilege_problems(ctx.config, [schema], service_tables=False)
        return problems, {}

    def _index_usage(self, ctx: MigrationContext, step: Step) -> CheckResult:
        problems, used = verification.index_usage_problems(TenantRef(step.tenant_id or "").schema)
        return problems, {"index_used": used}

    def _crud_smoke(self, ctx: MigrationContext, step: Step) -> CheckResult:
        return verification.crud_problems(TenantRef(step.tenant_id or "").schema), {}

    def _load_test(self, ctx: MigrationContext, step: Step) -> CheckResult:
        opts = ctx.options
        # Each client is a connection: stay within what the server lets this role open (one kept spare).
        clients = max(1, min(opts.load_clients, free_connections() - 1))
        problems, details = load_test.run_load_test(
            ctx.config,
            [t.schema for t in ctx.registered_tenants],
            clients,
            opts.load_seconds,
            opts.load_queries,
            opts.load_max_regression,
        )
        if clients < opts.load_clients:
            details["notes"].append(
                f"--load-clients {opts.load_clients} lowered to {clients}: the server's free connections"
            )
        return problems, {"load_test": details}


def load_summary(details: dict[str, object]) -> str:
    layouts = details.get("layouts")
    if not isinstance(layouts, dict):
        return "load test ran"
    parts = []
    for layout, figures in layouts.items():
        queries = figures["queries"]
        total = sum(q["queries"] for q in queries.values())
        worst = max((q["p95_ms"] or 0 for q in queries.values()), default=0)
        parts.append(
            f"{layout} {total / figures['seconds'] if figures['seconds'] else 0:,.0f} queries/s "
            f"(worst p95 {worst:.2f} ms)"
        )
    return f"{details.get('clients')} clients: " + ", ".join(parts)
