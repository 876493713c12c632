"""The phases x tenants picture, read from the tracking table only."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Q
from psycopg import sql

from migrator import db
from migrator import phases as phase_registry
from migrator.core.details import DeployDetails, DiscoverDetails, read_details
from migrator.core.steps import COPY_RANGE, RANGE_KINDS
from migrator.engine.tracking import latest_statuses
from migrator.models import DEPLOY_KEY, MigrationRecord, Status
from migrator.ops import registry, twoway
from migrator.ops.capture import Lag, lag
from migrator.phases.data import DataPhase
from migrator.phases.prepare import PreparePhase
from migrator.phases.schemas import SchemasPhase
from migrator.tables import LEGACY_TENANT_TABLES
from salesflow.layout import tenant_id_from_schema

GLOBAL = "*"
# The phase-wide cell of a phase that plans no phase-wide step: nothing to wait for.
NOT_APPLICABLE = "-"


@dataclass(frozen=True)
class RangeProgress:
    """One key range of a large table: its place in the plan, state, rows done and rows planned."""

    index: int
    status: str
    rows_done: int
    rows_planned: int


@dataclass(frozen=True)
class RangedTable:
    """A large table copied or validated in key ranges (phase 3), or compared in them by an online
    cutover, while some of its ranges are not done."""

    tenant_id: str
    table: str
    kind: str  # one of RANGE_KINDS
    ranges: list[RangeProgress]
    phase: str = DataPhase.name

    @property
    def what(self) -> str:
        if self.kind == COPY_RANGE:
            return "copy"
        return "validation" if self.phase == DataPhase.name else f"{self.phase} comparison"

    @property
    def ranges_done(self) -> int:
        return sum(r.status == Status.COMPLETED for r in self.ranges)

    @property
    def rows_done(self) -> int:
        return sum(r.rows_done for r in self.ranges)

    @property
    def rows_planned(self) -> int:
        return sum(r.rows_planned for r in self.ranges)

    def as_dict(self) -> dict[str, object]:
        return {
            "tenant": self.tenant_id,
            "table": self.table,
            "work": self.what,
            "ranges_done": self.ranges_done,
            "rows_done": self.rows_done,
            "rows_planned": self.rows_planned,
            "ranges": [
                {"range": r.index, "status": r.status, "rows_done": r.rows_done, "rows_planned": r.rows_planned}
                for r in self.ranges
            ],
        }


def _newest_attempts(columns: sql.SQL, where: sql.SQL) -> sql.Composed:
    """``columns`` of the newest attempt of each step ``where`` holds, for an aggregate to read: DISTINCT ON
    the step in the order of the tracking table's (migration_id, attempt DESC) index."""
    return sql.SQL(
        "SELECT DISTINCT ON (migration_id) {columns} FROM {table} WHERE {where} ORDER BY migration_id, attempt DESC"
    ).format(columns=columns, table=sql.Identifier(MigrationRecord._meta.db_table), where=where)


def ranged_tables_in_progress() -> list[RangedTable]:
    """The tables split into key ranges whose ranges are not all done (running, interrupted or
    not started yet), each range with its rows done and planned: one aggregate over the ranges' newest
    attempts (few rows: only large tables have ranges)."""
    latest = _newest_attempts(
        sql.SQL("phase, tenant_id, target, step, status, rows_copied, rows_expected, details"),
        sql.SQL("step = ANY(%s)"),
    )
    found = db.fetchall(
        sql.SQL(
            "SELECT tenant_id, target, step, json_agg(json_build_array((details->'range'->>'index')::int, status, "
            "coalesce(rows_copied, 0), coalesce(rows_expected, 0)) ORDER BY (details->'range'->>'index')::int), phase "
            "FROM ({latest}) latest "
            "WHERE status <> %s GROUP BY phase, tenant_id, target, step HAVING bool_or(status <> %s) "
            "ORDER BY tenant_id, target, phase DESC, step"
        ).format(latest=latest),
        [list(RANGE_KINDS), Status.ROLLED_BACK, Status.COMPLETED],
    )
    return [
        RangedTable(tenant_id or GLOBAL, target, step, [RangeProgress(*entry) for entry in ranges], phase)
        for tenant_id, target, step, ranges, phase in found
    ]


@dataclass
class StatusReport:
    phases: list[str]
    scopes: list[str]
    cells: dict[tuple[str, str], str] = field(default_factory=dict)
    failures: list[MigrationRecord] = field(default_factory=list)
    # tenant_* schemas phase 1 left out (invalid names): {"schema", "rows", "reason"}; never migrated
    excluded: list[dict[str, object]] = field(default_factory=list)
    # online migration: per captured schema, changes captured and not applied yet
    lag: list[Lag] = field(default_factory=list)
    # registered tenants whose schema does not exist
    missing_schemas: list[str] = field(default_factory=list)
    # public and the built tenant schemas lacking a migration of this release (a deploy stopped half way)
    behind: list[str] = field(default_factory=list)
    # {schema: reason}: the schemas the last migrate_schemas run failed to migrate (or refused)
    deploy_failures: dict[str, str] = field(default_factory=dict)
    # tenant schemas with legacy tables and no registry row (created since phase 1): never migrated
    unregistered: list[str] = field(default_factory=list)
    # tenants registered as new (target layout) whose schemas hold legacy tables no phase migrates
    new_with_legacy: list[str] = field(default_factory=list)
    # online migration: schemas whose legacy and new tables are in two-way sync (until finalize)
    synced: int = 0
    # large tables whose key ranges are not all done yet, with each range's progress
    ranged: list[RangedTable] = field(default_factory=list)

    @property
    def cells_complete(self) -> bool:
        """Every cell done and no step failed: a tenant refused before it was registered has no cell,
        only its failed step."""
        return self.cells_done == self.cells_to_do and not self.failures

    @property
    def complete(self) -> bool:
        """What ``status --check`` asks: the migration is complete, and every registered tenant's schema
        exists and took the last deploy's migrations."""
        return (
            self.cells_complete
            and not self.missing_schemas
            and not self.deploy_failures
            and not self.unregistered
            and not self.new_with_legacy
            and not self.behind
        )

    @property
    def cells_to_do(self) -> int:
        return sum(state != NOT_APPLICABLE for state in self.cells.values())

    @property
    def cells_done(self) -> int:
        return sum(state == "done" for state in self.cells.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "complete": self.complete,
            "phases": self.phases,
            "tenants": {scope: {phase: self.cells[(phase, scope)] for phase in self.phases} for scope in self.scopes},
            "excluded": self.excluded,
            "missing_schemas": self.missing_schemas,
            "schemas_behind": self.behind,
            "deploy_failures": self.deploy_failures,
            "unregistered_schemas": self.unregistered,
            "new_tenants_with_legacy_tables": self.new_with_legacy,
            "two_way_synced": self.synced,
            "ranged_tables": [t.as_dict() for t in self.ranged],
            "lag": [{"scope": x.scope, "pending": x.pending, "oldest_seconds": x.oldest_seconds} for x in self.lag],
            "failed": [
                {"migration_id": r.migration_id, "attempt": r.attempt, "status": r.status, "error": failure_reason(r)}
                for r in self.failures
            ],
        }


def cell_state(statuses: set[str]) -> str:
    if not statuses:
        return "pending"
    if Status.FAILED in statuses:
        return "failed"
    if Status.RUNNING in statuses:
        return "running"
    if statuses <= {Status.COMPLETED}:
        return "done"
    if statuses == {Status.ROLLED_BACK}:
        return "undone"
    return "pending"


def excluded_schemas() -> list[dict[str, object]]:
    """The schemas phase 1's latest completed discovery left out, with their row counts, and the tenants
    left out since (state EXCLUDED)."""
    from tenants.models import MigrationState, Tenant

    discover = (
        MigrationRecord.objects.of(PreparePhase.DISCOVER)
        .filter(status=Status.COMPLETED)
        .order_by("-completed_at", "-id")
        .only("details")
        .first()
    )
    found = list(read_details(DiscoverDetails, discover.details).get("excluded_schemas") or []) if discover else []
    listed = {entry["schema"] for entry in found}
    for schema in Tenant.objects.filter(migration_state=MigrationState.EXCLUDED).values_list("schema_name", flat=True):
        if schema not in listed:
            found.append({"schema": schema, "rows": None, "reason": "--skip-schema"})
    return found


def registered_schemas_missing() -> list[str]:
    """The schemas of registered tenants (every registry row) that do not exist."""
    from tenants.models import Tenant

    # One query: the registry's rows whose schema pg_namespace lacks.
    missing = Tenant.objects.extra(  # a constant condition: the ORM has no pg_namespace model
        where=["NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = tenants.schema_name)"]
    )
    return list(missing.order_by("schema_name").values_list("schema_name", flat=True))


def schemas_behind_release() -> list[str]:
    """The public schema and the tenant schemas built by phase 2 or by the application (state NEW), those
    whose ``django_migrations`` lacks a migration of this release: a ``migrate_schemas`` killed half way,
    or a tenant whose creation was, records no failure; the schemas themselves say it."""
    from django_tenants.utils import get_public_schema_name

    from tenants.migration_executor import expected_migrations, schemas_behind
    from tenants.models import MigrationState, Tenant

    # the states phase 2 and the phases after it set: the tenant's new tables exist
    with_tables = [
        p.tenant_state_on_success for p in phase_registry.ORDERED if (p.number or 0) >= (SchemasPhase.number or 0)
    ]
    built = [MigrationState.NEW, *(state for state in with_tables if state)]
    tenants = Tenant.objects.filter(migration_state__in=built).order_by("schema_name")
    return schemas_behind(
        [get_public_schema_name(), *tenants.values_list("schema_name", flat=True)], expected_migrations()
    )


def _left_half_done(record: MigrationRecord) -> bool:
    """A rollback's or finalize's step that failed or was killed leaves the database half way, unless doing it
    again changes nothing (a check that refused: the backup's, an online rollback's): such a refusal stays in
    the history without holding the migration's state at failed for good."""
    kind = phase_registry.get_phase(record.phase)().kinds.get(record.step)
    return kind is None or not kind.rerunnable


def failure_label(record: MigrationRecord) -> str:
    return "FAILED" if record.status == Status.FAILED else "UNFINISHED"


def failure_reason(record: MigrationRecord) -> str:
    """What went wrong with one of the report's failures: its error, or, for a step still marked RUNNING (a
    rollback's or finalize's, killed half way or running now), that it did not finish."""
    if record.error_message:
        return record.error_message
    if record.status == Status.RUNNING:
        return "did not finish: its run was interrupted (or is still running); rerun the phase to finish it"
    return "no error was recorded"


def deploy_failures() -> dict[str, str]:
    """{schema: reason} of the newest recorded ``migrate_schemas`` run (empty: none recorded, or none failed)."""
    record = MigrationRecord.objects.filter(migration_id=DEPLOY_KEY).order_by("-attempt").only("details").first()
    failed = read_details(DeployDetails, record.details if record else None).get("failed")
    return dict(failed) if isinstance(failed, dict) else {}


def status_report() -> StatusReport:
    from tenants.models import Tenant

    ordered = phase_registry.ORDERED
    phases = [p.name for p in ordered]
    tenant_steps_only = {p.name for p in ordered if not p.has_phase_wide_steps}
    from tenants.models import MigrationState

    tenants = list(
        Tenant.objects.exclude(migration_state__in=[MigrationState.NEW, MigrationState.EXCLUDED])
        .order_by("tenant_id")
        .values_list("tenant_id", flat=True)
    )
    report = StatusReport(phases, [GLOBAL, *tenants])
    statuses = {(phase, tenant_id or GLOBAL): found for (phase, tenant_id), found in latest_statuses(phases).items()}
    report.excluded = excluded_schemas()
    left_out = {tenant_id_from_schema(str(entry["schema"])) for entry in report.excluded}
    # Failed attempts are few: only they are read as records (the latest of their step). A rollback is no
    # numbered phase, but one that failed or was killed half way (its service roles dropped, its restore not
    # done) leaves the database neither migrated nor rolled back: its step counts as a failure too.
    undoing = [p.name for p in phase_registry.PHASES if p.alters_tables and p.name not in phases]
    unfinished = Q(phase__in=phases, status=Status.FAILED) | Q(
        phase__in=undoing, status__in=[Status.FAILED, Status.RUNNING]
    )
    report.failures = [
        record
        for record in MigrationRecord.objects.filter(unfinished).latest_attempts()
        if (record.tenant_id is None or record.tenant_id not in left_out)
        and (record.phase in phases or _left_half_done(record))
    ]
    for phase in phases:
        for scope in report.scopes:
            if scope == GLOBAL and phase in tenant_steps_only:
                report.cells[(phase, scope)] = NOT_APPLICABLE
            else:
                report.cells[(phase, scope)] = cell_state(statuses.get((phase, scope), set()))
    report.lag = lag()
    report.synced = len(twoway.synced_scopes())
    report.ranged = ranged_tables_in_progress()
    report.missing_schemas = registered_schemas_missing()
    report.deploy_failures = deploy_failures()
    report.behind = schemas_behind_release()
    if report.cells_done:  # before phase 1 every legacy tenant is unregistered: nothing to tell yet
        listed = {str(entry["schema"]) for entry in report.excluded}
        report.unregistered = [
            s
            for s in registry.unregistered_legacy_schemas(list(LEGACY_TENANT_TABLES), Tenant._meta.db_table)
            if s not in listed
        ]
    report.new_with_legacy = registry.new_tenants_with_legacy_tables(
        list(LEGACY_TENANT_TABLES), Tenant._meta.db_table, MigrationState.NEW
    )
    report.failures.sort(key=lambda r: r.completed_at or r.started_at or r.id, reverse=True)
    return report
