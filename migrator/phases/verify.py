"""Phase 5 — verification: the plan's queries, counts, isolation, index use, CRUD through the ORM."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, IntegrityError

from migrator import catalog, db
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.details import CheckDetails, read_details
from migrator.core.phase import ApplyStep, Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.engine.orchestration import free_connections
from migrator.models import MigrationRecord, Status
from migrator.modes import MigrationMode, mode_for, online_scopes
from migrator.ops import carried, grants, load_test, verification
from migrator.ops.load_figures import LoadTestFigures
from migrator.ops.tenant_decisions import created_new_schemas
from migrator.step_ref import StepRef
from migrator.tables import TENANT_DATA_TABLES, service_tables
from salesflow.layout import NAMESPACE_SERVICE
from tenants.models import MigrationState

logger = logging.getLogger("migrator.verify")

CheckResult = tuple[list[str], CheckDetails]
PhaseWideCheck = Callable[[MigrationContext, Step], CheckResult]
TenantCheck = Callable[[MigrationContext, Step, "BatchFacts"], CheckResult]  # a tenant's, on its batch's facts
# What a check that found no problem saw, from the details it recorded.
Summary = Callable[[CheckDetails], str]


def said(message: str) -> Summary:
    return lambda details: message


TENANT_CHECKS = {
    "tenant_tables": "Namespaced tables exist in {schema} (catalog)",
    "counts_match": "Row counts of {schema}'s namespaced tables equal those validated in phase 3",
    "isolation": "In {schema}'s ORM context only its own rows are visible; each service role is refused "
    "the other service's table",
    "index_usage": "EXPLAIN of contact by email, activities by contact and by due date uses an index",
    "crud_smoke": "Create, read, update, delete a contact and an activity through the ORM in {schema}'s new "
    "tables (rolled back)",
}


# Tenants whose checks read the catalog, their row counts, their validated counts, their grants and
# their plans together (a few queries for all of them); each tenant is still checked in its own schema
# context and recorded on its own, in order.
TENANTS_PER_BATCH = 10


@dataclass
class BatchFacts:
    """What the tenant checks of a batch ask the server, read once for all of its tenants (a batch of one
    when a tenant runs alone), and handed to each check: a check reads its facts from here and nowhere
    else. A per-tenant fact the batch's read failed on (e.g. a tenant's table is missing) is read again
    tenant by tenant; a tenant whose own read fails has the error instead (``unreadable``), and the
    checks that need that fact fail with it, as asking on their own would have."""

    schemas: dict[str, str]  # tenant -> schema
    tenant_schemas: frozenset[str]  # every registered tenant's schema (the isolation check's "others")
    missing_tables: dict[str, list[str]] = field(default_factory=dict)  # schema -> its missing tenant tables
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # tenant -> legacy table name -> rows
    validated: dict[str, dict[str, int | None]] = field(default_factory=dict)  # tenant -> table -> rows validated
    online: set[str] = field(
        default_factory=set
    )  # schemas migrated online (captured, or in two-way sync): modes.mode_for
    missing_roles: list[str] = field(default_factory=list)
    refused: dict[tuple[str, str, str], bool] = field(default_factory=dict)  # (role, schema, table) -> denied
    index_used: dict[str, dict[str, bool]] = field(default_factory=dict)  # schema -> key lookup -> index serves it
    crud_types: tuple[Any, Any] | None = None
    unreadable: dict[tuple[str, str], DatabaseError] = field(default_factory=dict)  # (tenant, fact) -> error

    def require(self, tenant_id: str, *facts: str) -> None:
        """Raise the error reading one of ``facts`` for ``tenant_id`` failed with, if one did."""
        for fact in facts:
            if (error := self.unreadable.get((tenant_id, fact))) is not None:
                raise error


def read_batch_facts(ctx: MigrationContext, tenant_ids: list[str]) -> BatchFacts:
    """The facts of the tenant checks of ``tenant_ids``, in a few queries for all of them."""
    facts = BatchFacts(
        schemas={tenant_id: TenantRef(tenant_id).schema for tenant_id in tenant_ids},
        tenant_schemas=ctx.registered_schemas,
    )
    roles = list(ctx.config.service_roles.values())
    # Facts of the whole batch (the same for every tenant of it).
    for fact, read in (
        ("online", online_scopes),
        ("missing_roles", lambda: catalog.missing_roles(roles)),
        ("crud_types", verification.crud_types),
    ):
        try:
            setattr(facts, fact, read())
        except DatabaseError as exc:
            facts.unreadable.update({(tenant_id, fact): exc for tenant_id in tenant_ids})
    present = [role for role in roles if role not in facts.missing_roles]

    def grants(tenants: list[str]) -> dict[tuple[str, str, str], bool]:
        schemas = [facts.schemas[t] for t in tenants]
        return verification.denied([(r, s, t.table) for r in present for s in schemas for t in TENANT_DATA_TABLES])

    def by_schema(read: Callable[[list[str]], dict[str, Any]]) -> Callable[[list[str]], dict[str, Any]]:
        return lambda tenants: read([facts.schemas[t] for t in tenants])

    missing_tables = by_schema(verification.missing_tenant_tables)
    facts.missing_tables = _read_by_tenant(facts, "missing_tables", tenant_ids, missing_tables)
    facts.counts = _read_by_tenant(facts, "counts", tenant_ids, verification.row_counts)
    facts.validated = _read_by_tenant(facts, "validated", tenant_ids, validated_counts)
    facts.refused = _read_by_tenant(facts, "refused", tenant_ids, grants)
    facts.index_used = _read_by_tenant(facts, "index_used", tenant_ids, by_schema(verification.index_usage_by_schema))
    return facts


def _read_by_tenant(
    facts: BatchFacts, fact: str, tenant_ids: list[str], read: Callable[[list[str]], dict[Any, Any]]
) -> dict[Any, Any]:
    """``read(tenant_ids)``; when it fails, ``read`` of each tenant alone, and the error of those whose
    own read fails in ``facts.unreadable``."""
    try:
        return read(tenant_ids)
    except DatabaseError as exc:
        if len(tenant_ids) == 1:
            facts.unreadable[(tenant_ids[0], fact)] = exc
            return {}
        logger.info("reading %s for a batch of tenants failed; reading it tenant by tenant", fact, exc_info=True)
    found: dict[Any, Any] = {}
    for tenant_id in tenant_ids:
        found |= _read_by_tenant(facts, fact, [tenant_id], read)
    return found


class VerifyPhase(Phase):
    name = "verify"
    number = 5
    estimate = "2-3 days"
    changes_schemas = False  # rows only: deploys may run meanwhile (tenants/schema_lock.py)
    summary = "verification queries, row counts, tenant and service isolation, index use, CRUD smoke test"
    tenant_state_on_success = MigrationState.VERIFIED
    requires = "security"
    # Read by the dashboard (its figures) and the rehearsal report.
    LOAD_TEST = StepRef(name, "load_test")
    undone_by_rollback = True
    undone_by_restore = True
    continue_after_failure = True
    tenants_per_batch = TENANTS_PER_BATCH

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
                for schema in created_new_schemas()
            ]
        for tenant in ctx.registered_tenants:
            for kind, description in TENANT_CHECKS.items():
                steps.append(self.step(kind, description.format(schema=tenant.schema), tenant_id=tenant.tenant_id))
        if ctx.registered_tenants:
            # Phase-wide, after the tenant checks (the runner keeps plan order between the two).
            steps.append(
                self.step(
                    self.LOAD_TEST.kind,
                    f"{ctx.options.load_clients} connections run the key queries "
                    f"(contact by email, a contact's activities, upcoming activities; a contact insert "
                    f"and update, rolled back, on the new tables only: the legacy tables are never written) "
                    f"for at most {ctx.options.load_seconds:g} s, each read on the "
                    "legacy tables and then with the same key on the new ones through the service "
                    "roles; the new p95 may be at "
                    f"most {ctx.options.load_max_regression:g} % worse",
                )
            )
        return steps

    def step_kinds(self) -> dict[str, StepKind]:
        checks: dict[str, ApplyStep] = {
            "expected_schemas": self._recording(self._expected_schemas, said("schemas and service tables as planned")),
            "row_counts": self._recording(self._row_counts, _row_counts_summary),
            "role_isolation": self._recording(
                self._role_isolation, said("each role reads only its own service schema")
            ),
            "tenant_tables": self._recording_tenant(self._tenant_tables, said("namespaced tables present")),
            "counts_match": self._recording_tenant(self._counts_match, _counts_match_summary),
            "isolation": self._recording_tenant(self._tenant_isolation, said("own rows only; other service refused")),
            "index_usage": self._recording_tenant(self._index_usage, _index_usage_summary),
            "crud_smoke": self._recording_tenant(self._crud_smoke, _crud_smoke_summary),
            "new_tenant": self._recording(self._new_tenant, said("tables present; grants as planned")),
            self.LOAD_TEST.kind: self._recording(self._load_test, _load_test_summary),
        }
        # Checks change nothing: done again, they find the same (their records wait for the tenant's end).
        return {kind: StepKind(apply, self._problems_found, rerunnable=True) for kind, apply in checks.items()}

    @contextmanager
    def tenant_batch(self, ctx: MigrationContext, tenant_ids: list[str]) -> Iterator[BatchFacts]:
        yield read_batch_facts(ctx, tenant_ids)

    def tenant_context(self, ctx: MigrationContext, tenant_id: str) -> AbstractContextManager[None]:
        # One search_path for all of a tenant's checks (and their record), not a switch per check.
        return verification.in_schema(TenantRef(tenant_id).schema)

    def _recording(self, check: PhaseWideCheck, summary: Summary) -> ApplyStep:
        """A check's problems go on the step's record (verify keeps going and reports them all); a check that
        found none says what it saw (``summary``)."""

        def apply(ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
            problems, details = check(ctx, step)
            message = "; ".join(problems) if problems else summary(details)
            recorded: CheckDetails = {**details, "problems": problems}
            return StepResult(message=message, details=recorded)

        return apply

    def _recording_tenant(self, check: TenantCheck, summary: Summary) -> ApplyStep:
        """A tenant check, on the facts of the batch its tenant runs in (``tenant_batch``, which the
        engine hands over as ``reporter.batch``); read for a batch of this tenant alone when it runs
        outside one."""

        def apply(ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
            tenant_id = step.tenant_id or ""
            facts = reporter.batch
            if not isinstance(facts, BatchFacts) or tenant_id not in facts.schemas:
                facts = read_batch_facts(ctx, [tenant_id])
            return self._recording(lambda ctx, step: check(ctx, step, facts), summary)(ctx, step, reporter)

        return apply

    @staticmethod
    def _problems_found(ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        return list(read_details(CheckDetails, result.details).get("problems", []))

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

    def _tenant_tables(self, ctx: MigrationContext, step: Step, facts: BatchFacts) -> CheckResult:
        schema = TenantRef(step.tenant_id or "").schema
        facts.require(step.tenant_id or "", "missing_tables")
        return verification.tenant_table_problems(schema, facts.missing_tables[schema]), {}

    @staticmethod
    def _mode(schema: str, facts: BatchFacts) -> MigrationMode:
        """The mode the tenant was migrated in (data --online: its tables are still written)."""
        return mode_for(schema, online_scopes=facts.online)

    def _counts_match(self, ctx: MigrationContext, step: Step, facts: BatchFacts) -> CheckResult:
        tenant = TenantRef(step.tenant_id or "")
        facts.require(tenant.tenant_id, "counts", "validated", "online")
        counts = facts.counts.get(tenant.tenant_id, {})
        validated = facts.validated.get(tenant.tenant_id, {})
        problems = []
        writes_go_on = self._mode(tenant.schema, facts).writes_go_on  # counts move; cutover compares content
        for table, key in ((t.table, t.legacy_table) for t in TENANT_DATA_TABLES):
            if table not in validated:
                problems.append(f"{table} has no completed validation in phase 3")
            elif validated[table] != counts.get(key) and not writes_go_on:
                problems.append(f"{table} holds {counts.get(key)} rows, phase 3 validated {validated[table]}")
        return problems, {"counts": counts}

    def _tenant_isolation(self, ctx: MigrationContext, step: Step, facts: BatchFacts) -> CheckResult:
        tenant = TenantRef(step.tenant_id or "")
        facts.require(tenant.tenant_id, "online", "counts", "refused", "missing_roles")
        others = facts.tenant_schemas
        mode = self._mode(tenant.schema, facts)
        counted = facts.counts.get(tenant.tenant_id)
        direct = None  # the batch's counts, unless written since they were read
        if counted is not None and not mode.writes_go_on:
            direct = {t.table: counted[t.legacy_table] for t in TENANT_DATA_TABLES}
        with mode.consistent_reads():  # the ORM's counts and the schema's
            problems, seen = verification.tenant_context_problems(tenant.schema, others, direct)
        objects = [(NAMESPACE_SERVICE[t.namespace], tenant.schema, t.table) for t in TENANT_DATA_TABLES]
        problems += verification.role_isolation_problems(ctx.config, objects, facts.refused, facts.missing_roles)
        return problems, {"orm_counts": seen}

    def _new_tenant(self, ctx: MigrationContext, step: Step) -> CheckResult:
        schema = step.target.name
        problems = verification.tenant_table_problems(schema, verification.missing_tenant_tables([schema])[schema])
        if not problems:
            problems = grants.privilege_problems(ctx.config, [schema], service_tables=False)
        return problems, {}

    def _index_usage(self, ctx: MigrationContext, step: Step, facts: BatchFacts) -> CheckResult:
        schema = TenantRef(step.tenant_id or "").schema
        facts.require(step.tenant_id or "", "index_used")
        problems, used = verification.index_usage_problems(schema, facts.index_used[schema])
        return problems, {"index_used": used}

    def _crud_smoke(self, ctx: MigrationContext, step: Step, facts: BatchFacts) -> CheckResult:
        schema = TenantRef(step.tenant_id or "").schema
        facts.require(step.tenant_id or "", "online", "crud_types")
        # The smoke row may break a rule phase 3 carried from this tenant's legacy table (a CHECK the
        # seeded row knows nothing of): the tenant's own rule working, not a fault of the migration.
        tenant_rules = frozenset(o["target"] for o in carried.carried_objects(step.tenant_id or "", TENANT_COPY))
        try:
            synced = self._mode(schema, facts).writes_go_on  # the test rows skip the two-way sync
            return verification.crud_problems(schema, facts.crud_types, tenant_rules, synced), {}
        except IntegrityError as exc:
            refused_by = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)
            return [], {"refused_by_carried_constraint": refused_by}

    def _load_test(self, ctx: MigrationContext, step: Step) -> CheckResult:
        opts = ctx.options
        # Each client is a connection: stay within what the server lets this role open (one kept spare).
        clients = max(1, min(opts.load_clients, free_connections() - 1))
        problems, figures = load_test.run_load_test(
            ctx.config,
            [t.schema for t in ctx.registered_tenants],
            clients,
            opts.load_seconds,
            opts.load_queries,
            opts.load_max_regression,
        )
        if clients < opts.load_clients:
            figures.notes.append(
                f"--load-clients {opts.load_clients} lowered to {clients}: the server's free connections"
            )
        return problems, {"load_test": figures.to_json()}


def _row_counts_summary(details: CheckDetails) -> str:
    counts = details.get("counts")
    if not isinstance(counts, dict):
        return "OK"
    names = [t.legacy_table for t in TENANT_DATA_TABLES]
    return f"{len(counts)} tenants: " + ", ".join(f"{sum(c[n] for c in counts.values())} {n}" for n in names)


def _counts_match_summary(details: CheckDetails) -> str:
    counts = details.get("counts")
    if not isinstance(counts, dict):
        return "OK"
    return ", ".join(f"{t.legacy_table} {counts.get(t.legacy_table)}" for t in TENANT_DATA_TABLES) + " as validated"


def _load_test_summary(details: CheckDetails) -> str:
    load = details.get("load_test")
    return load_summary(LoadTestFigures.from_json(load)) if isinstance(load, dict) else "OK"


def _crud_smoke_summary(details: CheckDetails) -> str:
    if details.get("refused_by_carried_constraint"):
        return (
            f"the test contact was refused by {details['refused_by_carried_constraint']}, a constraint carried "
            "from the tenant's legacy table (rolled back)"
        )
    return "create, read, update, delete OK (rolled back)"


def _index_usage_summary(details: CheckDetails) -> str:
    return f"{len(details.get('index_used', {}))} key lookups served by an index"


# What verify compares the tenants' row counts with: phase 3's record of each table; and the copies, whose
# records name the legacy constraints carried to the new tables.
VALIDATION = StepRef("data", "validate")
TENANT_COPY = StepRef("data", "copy_table")


def validated_counts(tenant_ids: list[str]) -> dict[str, dict[str, int | None]]:
    """Tenant -> table -> the rows phase 3's completed validation of it counted."""
    rows = (
        MigrationRecord.objects.filter(phase=VALIDATION.phase, step=VALIDATION.kind, tenant_id__in=tenant_ids)
        .latest_attempts()
        .filter(status=Status.COMPLETED)
        .values_list("tenant_id", "target", "rows_expected")
    )
    found: dict[str, dict[str, int | None]] = {tenant_id: {} for tenant_id in tenant_ids}
    for tenant_id, table, rows_expected in rows:
        found[tenant_id or ""][table] = rows_expected
    return found


def load_summary(figures: LoadTestFigures) -> str:
    parts = []
    for layout, measured in figures.layouts.items():
        queries = measured.queries
        total = sum(q.queries for q in queries.values())
        worst = max((q.p95_ms or 0 for q in queries.values()), default=0)
        parts.append(
            f"{layout} {total / measured.seconds if measured.seconds else 0:,.0f} queries/s (worst p95 {worst:.2f} ms)"
        )
    return f"{figures.clients} clients: " + ", ".join(parts)
