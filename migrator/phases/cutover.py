"""Phase 6 — cutover: legacy tables archived (or dropped with --drop-legacy), tenants live."""

from __future__ import annotations

from dataclasses import replace

from django.db import transaction
from psycopg import sql

from migrator import catalog
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.details import ArchiveDetails, LiveCountDetails, SequenceDetails
from migrator.core.errors import MigrationError
from migrator.core.fingerprint import Fingerprint
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.engine import tracking
from migrator.models import Status
from migrator.modes import mode_for
from migrator.ops import archive, dependents, reference
from migrator.ops.copies import (
    auth_copy,
    continue_sequence_of,
    in_legacy_timezone,
    tenant_copy,
    validation_fingerprints,
)
from migrator.ops.table_copy import TableCopy
from migrator.step_ref import StepRef, Target
from migrator.tables import AUTH_TABLES, LEGACY_AUTH_TABLES, LEGACY_TENANT_TABLES, REFERENCE_TABLES, TENANT_DATA_TABLES
from tenants.models import MigrationState, Tenant


def _changed_since_validation(validated: dict[str, TableCopy]) -> list[str]:
    """What differs from phase 3's validation record, per table: each ``validate`` step key -> its copy.

    The legacy side must still hold what was validated (a legacy write since then would be lost),
    and the target must exist and still hold what was validated (a rollback may have dropped it).
    """
    records = tracking.latest_records(VALIDATION.phase, validated)
    problems = []
    for key, copy in validated.items():
        legacy = f"{copy.source_schema}.{copy.source_table}"
        target = f"{copy.target_schema}.{copy.target_table}"
        record = records.get(key)
        if record is None or record.status != Status.COMPLETED:
            problems.append(f"{target}: no completed phase-3 validation")
            continue
        if not copy.schema_catalog.table_exists(copy.target_schema, copy.target_table):
            problems.append(f"{target}: table missing")
            continue
        validated_source = Fingerprint.parse_recorded(record.source_fingerprint)
        if validated_source is None:  # validated with no legacy table: there is nothing to compare
            if copy.schema_catalog.table_exists(copy.source_schema, copy.source_table):
                problems.append(f"{legacy}: appeared after phase 3")
            continue
        if not copy.schema_catalog.table_exists(copy.source_schema, copy.source_table):
            problems.append(f"{legacy}: table missing")
            continue
        source, current_target = validation_fingerprints(copy, validated_source.method)
        if source != validated_source:
            problems.append(
                f"{legacy}: {record.rows_expected} rows validated, {source.rows} now"
                + ("" if source.rows != record.rows_expected else ", content changed")
            )
        if current_target != Fingerprint.parse_recorded(record.target_fingerprint):
            problems.append(
                f"{target}: {record.rows_copied} rows validated, {current_target.rows} now"
                + ("" if current_target.rows != record.rows_copied else ", content changed")
            )
    return problems


def _inheritance_children(schema: str, tables: list[str]) -> list[str]:
    """Inheritance children of the legacy tables: phase 3 refuses them, and what it validated (the
    parents' own rows) says nothing of a child's rows, which would stay behind in the schema."""
    return [
        f"{child.schema}.{child.table} ({child.rows} rows) inherits from {schema}.{child.parent}"
        for child in catalog.inheritance_children(schema, tables)
    ]


def _refuse_changes(problems: list[str], scope: str, tenant_id: str | None = None) -> None:
    if not problems:
        return
    if tenant_id is None:  # the auth tables: every tenant's
        again = "roll back with `migrate_phase rollback` and run phases 2-5 again"
    else:  # the other tenants may be live already: this one alone goes back and is migrated again
        only = f"--tenant {tenant_id}"
        again = (
            f"roll it back with `migrate_phase rollback {only}`, run phases schemas, data, security and verify "
            f"with {only} again, then `migrate_phase cutover`"
        )
    raise MigrationError(
        f"{scope} no longer matches what phase 3 validated: {'; '.join(problems)}; nothing was archived "
        f"({again} to carry the changes over)"
    )


def _continue_sequences(validated: dict[str, TableCopy]) -> dict[str, SequenceDetails]:
    """Under the lock that stops the legacy tables' writers: the new tables' sequences continue after
    whatever the legacy sequences issued since phase 3 (an insert deleted again, or rolled back, leaves
    the content as validated but the sequence ahead)."""
    return {
        copy.target_table: continue_sequence_of(copy)
        for copy in validated.values()
        if copy.schema_catalog.table_exists(copy.source_schema, copy.source_table)
    }


def _archived_by_an_earlier_attempt(tenant: TenantRef, archive_schema: str) -> dict[str, str]:
    """Table -> where it went, when an earlier attempt moved the tenant's legacy tables and was killed
    before its record was written: none is left in the tenant's schema and the archive holds them
    under this tenant's name. The move commits only after its checks, in the same transaction, so
    archived tables are checked ones."""
    in_schema = catalog.tables_by_schema([tenant.schema])[tenant.schema]
    if in_schema & set(LEGACY_TENANT_TABLES):
        return {}
    if not catalog.schema_exists(archive_schema):
        return {}
    archived = catalog.tables_by_schema([archive_schema])[archive_schema]
    names = {table: archive.archive_table_name(tenant.tenant_id, table) for table in LEGACY_TENANT_TABLES}
    return {table: f"{archive_schema}.{name}" for table, name in names.items() if name in archived}


# What cutover compares the legacy tables with before it archives them: phase 3's record of each table.
VALIDATION = StepRef("data", "validate")

# Unfinished verify steps named in cutover's refusal (with thousands of tenants the list would be a page).
UNFINISHED_SHOWN = 5


def unfinished_steps(verify: Phase, ctx: MigrationContext, tenant_ids: set[str]) -> tuple[int, list[str]]:
    """The steps phase ``verify`` plans for ``tenant_ids``, and its phase-wide steps, whose latest attempt is
    not COMPLETED: how many, and the first UNFINISHED_SHOWN as "<phase> <kind> <tenant or (all)> <what
    happened>", in plan order."""
    required = [s for s in verify.plan(ctx) if s.tenant_id is None or s.tenant_id in tenant_ids]
    latest = tracking.latest_states(verify.name)
    unfinished = [s for s in required if (row := latest.get(s.key)) is None or row.status != Status.COMPLETED]
    shown = unfinished[:UNFINISHED_SHOWN]
    records = tracking.latest_records(verify.name, [s.key for s in shown if s.key in latest])
    lines = []
    for step in shown:
        record = records.get(step.key)
        if record is None:
            what = "never ran"
        elif record.status == Status.FAILED:
            what = f"FAILED: {' '.join((record.error_message or 'no error recorded').split())}"
        else:
            what = record.status
        name = f"{verify.name} {step.kind}" + (f" {step.target}" if step.target.name else "")
        lines.append(f"{name} {step.tenant_id or '(all)'} {what}")
    return len(unfinished), lines


# The merges of reference rows (phase-wide, and a tenant's rows added before its copy), whose records
# list the variants a first-wins merge discarded: those rows differ from their shared row on purpose.
REFERENCE_MERGES = (StepRef("data", "merge_reference"), StepRef("data", "copy_table"))


class CutoverPhase(Phase):
    name = "cutover"
    number = 6
    alters_tables = True
    estimate = "1 day"
    summary = "legacy tables moved to the archive schema (never dropped without --drop-legacy), tenants live"
    tenant_state_on_success = MigrationState.LIVE
    requires = "verify"
    undone_by_restore = True
    asks_confirmation = True
    # Read by the deploy gate: the steps that switch a tenant (or the auth schema) to the new tables.
    ARCHIVE_LEGACY = StepRef(name, "archive_legacy")
    ARCHIVE_AUTH = StepRef(name, "archive_auth")

    def plan(self, ctx: MigrationContext) -> list[Step]:
        drop = ctx.options.drop_legacy
        where = "DROP" if drop else f"move to {ctx.config.archive_schema}"
        steps = [
            self.step("archive_schema", f"Create schema {ctx.config.archive_schema}", target=ctx.config.archive_schema)
        ]
        for tenant in ctx.registered_tenants:
            steps.append(
                self.tenant_step(
                    self.ARCHIVE_LEGACY.kind,
                    f"{where}: legacy tables of {tenant.schema}; tenant goes live",
                    tenant,
                    destructive=drop,
                )
            )
        if not ctx.tenant_filter:
            steps.append(
                self.step(
                    self.ARCHIVE_AUTH.kind,
                    f"{where}: legacy auth tables of {ctx.config.legacy_auth_schema}",
                    target=ctx.config.legacy_auth_schema,
                    destructive=drop,
                )
            )
        steps.append(self.step("final_status", "Every tenant live, no legacy table left in tenant schemas"))
        return steps

    def check_ready(self, ctx: MigrationContext, steps: list[Step]) -> None:
        """Nothing is archived while phase verify has a step that did not complete (failed, or never
        ran) for the tenants this run would cut over, or a phase-wide one (the load test, the role
        checks): those the runner's per-tenant check cannot see. Offline and online cutover alike."""
        from migrator.phases import get_phase  # a registry lookup: the registry imports this module

        verify = get_phase(self.requires or "")()
        count, shown = unfinished_steps(verify, ctx, {step.tenant_id for step in steps if step.tenant_id})
        if not count:
            return
        more = f"; and {count - len(shown)} more" if count > len(shown) else ""
        raise MigrationError(
            f"{self.name} cannot start: phase {verify.name} has {count} step(s) not completed: "
            f"{'; '.join(shown)}{more}; nothing was archived: fix the cause and rerun `migrate_phase {verify.name}`, "
            f"then {self.name}"
        )

    def confirmation_question(self, ctx: MigrationContext, steps: list[Step]) -> str:
        if any(step.destructive for step in steps):
            return "Cutover with --drop-legacy DROPS the legacy tables for good (the phase-1 backup stays). Continue?"
        return "Cutover archives the legacy tables and marks tenants live. Continue?"

    def step_kinds(self) -> dict[str, StepKind]:
        return {
            "archive_schema": StepKind(self._create_archive_schema),
            self.ARCHIVE_LEGACY.kind: StepKind(self._archive_tenant_tables, self._check_tenant_archived),
            self.ARCHIVE_AUTH.kind: StepKind(self._archive_auth_tables),
            "final_status": StepKind(self._count_live_tenants, self._check_every_tenant_live),
        }

    def _create_archive_schema(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        created = archive.ensure_archive_schema(ctx.config.archive_schema)
        return StepResult(message="created" if created else "exists")

    def _archive_tenant_tables(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        tenant = TenantRef(step.tenant_id or "")
        return mode_for(tenant.schema).cut_over(ctx, tenant.schema, reporter, lambda: self._archive_tenant(ctx, tenant))

    def _archive_tenant(self, ctx: MigrationContext, tenant: TenantRef) -> StepResult:
        drop = ctx.options.drop_legacy
        if not drop and (moved_before := _archived_by_an_earlier_attempt(tenant, ctx.config.archive_schema)):
            return StepResult(
                message=f"{len(moved_before)} legacy tables already archived (by an attempt stopped before "
                "it was recorded)",
                details=ArchiveDetails(archived=moved_before),
            )
        validated = {
            VALIDATION.key(tenant.tenant_id, Target(spec.target_table)): in_legacy_timezone(
                ctx, tenant_copy(tenant, spec)
            )
            for spec in TENANT_DATA_TABLES
        }
        # Checked and moved in one transaction, with the legacy tables locked first: no legacy write
        # can slip in between the check and the move.
        with transaction.atomic():
            archive.lock_tables(tenant.schema, list(LEGACY_TENANT_TABLES))
            # The schema's tables are locked or the tenant's own: until the move, their catalog
            # questions (the checks', the move's) come from one read of the schema. The move is its
            # last use: it renames or drops the tables it describes.
            schema_catalog = catalog.read_schemas(tenant.schema)
            checked = {key: replace(copy, schema_catalog=schema_catalog) for key, copy in validated.items()}
            problems = _changed_since_validation(checked)
            problems += _inheritance_children(tenant.schema, list(LEGACY_TENANT_TABLES))
            # Reference rows are merged, not validated one by one: a legacy row added since has no shared id.
            unmapped = reference.unmapped_counts(list(REFERENCE_TABLES), tenant.tenant_id, schema_catalog)
            problems += [
                f"{tenant.schema}.{table}: {rows} rows added since phase 3" for table, rows in unmapped.items() if rows
            ]
            # ... nor does a legacy row edited since: its shared row keeps the values merged.
            changed = reference.changed_counts(
                list(REFERENCE_TABLES),
                tenant.tenant_id,
                schema_catalog,
                reference.discarded_keys(REFERENCE_MERGES, tenant.tenant_id),
            )
            problems += [
                f"{tenant.schema}.{table}: {rows} rows changed since phase 3" for table, rows in changed.items() if rows
            ]
            _refuse_changes(problems, f"tenant {tenant.tenant_id}", tenant.tenant_id)
            found = dependents.of_tables(tenant.schema, LEGACY_TENANT_TABLES)
            dependents.refuse_uncarried(f"tenant {tenant.tenant_id}", found, ctx.options.leave_dependents, drop=drop)
            sequences = _continue_sequences(checked)
            # Foreign keys of other tables are let go of first: a drop never cascades to them.
            dependents.detach_foreign_keys(found)
            moved = archive.archive_tables(
                tenant.schema,
                tenant.tenant_id,
                list(LEGACY_TENANT_TABLES),
                ctx.config.archive_schema,
                drop,
                present=schema_catalog.tables_of(tenant.schema),
            )
            new_tables = {
                (tenant.schema, spec.legacy_table): sql.Identifier(tenant.schema, spec.target_table)
                for spec in TENANT_DATA_TABLES
            }
            carried = dependents.carry(
                found, new_tables, ctx.options.leave_dependents, archived=archive.archived_tables(moved, tenant.schema)
            )
        message = f"{len(moved)} legacy tables {'dropped' if drop else 'archived'}"
        if carried:
            message += f"; {len(carried)} dependent objects carried to the new tables"
        return StepResult(
            message=message,
            details=ArchiveDetails(archived=moved, sequences=sequences, dependents_carried=carried),
        )

    def _archive_auth_tables(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        self._require_auth_migrated(ctx)
        auth = ctx.config.legacy_auth_schema
        return mode_for(auth).cut_over(ctx, auth, reporter, lambda: self._archive_auth(ctx))

    def _archive_auth(self, ctx: MigrationContext) -> StepResult:
        cfg = ctx.config
        drop = ctx.options.drop_legacy
        validated = {
            VALIDATION.key(None, Target.auth_table(table)): in_legacy_timezone(
                ctx, auth_copy(cfg.legacy_auth_schema, table)
            )
            for table in LEGACY_AUTH_TABLES
        }
        with transaction.atomic():  # as for a tenant: locked, checked and moved in one transaction
            archive.lock_tables(cfg.legacy_auth_schema, list(LEGACY_AUTH_TABLES))
            _refuse_changes(
                _changed_since_validation(validated)
                + _inheritance_children(cfg.legacy_auth_schema, list(LEGACY_AUTH_TABLES)),
                f"legacy auth schema {cfg.legacy_auth_schema}",
            )
            # Nothing is carried from the legacy auth tables yet: whatever depends on them is refused
            # unless the operator leaves it with the archived tables.
            found = dependents.of_tables(cfg.legacy_auth_schema, LEGACY_AUTH_TABLES)
            dependents.refuse_uncarried(
                f"legacy auth schema {cfg.legacy_auth_schema}", found, ctx.options.leave_dependents, drop=drop
            )
            sequences = _continue_sequences(validated)
            moved = archive.archive_tables(
                cfg.legacy_auth_schema, cfg.legacy_auth_schema, list(LEGACY_AUTH_TABLES), cfg.archive_schema, drop
            )
            dropped_schema = archive.drop_schema_if_empty(cfg.legacy_auth_schema)
        return StepResult(
            message=f"{len(moved)} legacy auth tables {'dropped' if drop else 'archived'}",
            details=ArchiveDetails(archived=moved, legacy_schema_dropped=dropped_schema, sequences=sequences),
        )

    @staticmethod
    def _require_auth_migrated(ctx: MigrationContext) -> None:
        """The legacy auth tables leave only once their copy exists and phase 3 validated it.

        A phase-wide step has no tenant whose state gates it (with no valid tenant at all nothing
        else would stop it), so it checks its own prerequisites.
        """
        missing = [
            f"{entry.service}.{entry.table}"
            for entry in AUTH_TABLES
            if not catalog.table_exists(entry.service, entry.table)
        ]
        if missing:
            raise MigrationError(
                f"the auth service tables {', '.join(missing)} do not exist, so the legacy auth tables "
                f"of {ctx.config.legacy_auth_schema} stay; run `migrate_phase schemas` and "
                "`migrate_phase data` first"
            )
        keys = {VALIDATION.key(None, Target.auth_table(table)): table for table in LEGACY_AUTH_TABLES}
        validated = tracking.latest_records(VALIDATION.phase, keys)
        unvalidated = [
            str(Target.auth_table(table))
            for key, table in keys.items()
            if (row := validated.get(key)) is None or row.status != Status.COMPLETED
        ]
        if unvalidated:
            raise MigrationError(
                f"phase data has not validated {', '.join(unvalidated)}, so the legacy auth tables "
                f"of {ctx.config.legacy_auth_schema} stay; run `migrate_phase data` first"
            )

    def _count_live_tenants(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        live = Tenant.objects.filter(migration_state=MigrationState.LIVE).count()
        total = Tenant.objects.count()
        return StepResult(message=f"{live} of {total} tenants live", details=LiveCountDetails(live=live, tenants=total))

    def _check_tenant_archived(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        schema = TenantRef(step.tenant_id or "").schema
        return mode_for(schema).cut_over_problems(
            schema, lambda: sorted(catalog.tables_by_schema([schema])[schema] & set(LEGACY_TENANT_TABLES))
        )

    def _check_every_tenant_live(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        # Runs after every tenant step of this run: a tenant that failed its cutover shows here.
        selected = [t.tenant_id for t in ctx.registered_tenants]
        not_live = Tenant.objects.filter(tenant_id__in=selected).exclude(migration_state=MigrationState.LIVE)
        return [f"tenant {t} is not live" for t in not_live.values_list("tenant_id", flat=True)[:10]]
