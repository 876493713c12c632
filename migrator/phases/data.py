"""Phase 3 — data: auth tables, merged reference data, tenant tables; each validated by fingerprint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from migrator import catalog, db
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.details import (
    CopyDetails,
    MergeReferenceDetails,
    ReferenceRowsDetails,
    ValidateDetails,
    read_details,
)
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.modes import MigrationMode, mode_for, online_scopes
from migrator.ops import carried, constraints, fingerprint, ranges, reference, twoway
from migrator.ops.conversions import legacy_timezone
from migrator.ops.copies import (
    auth_copy,
    compare_in_ranges,
    continue_sequence_of,
    in_legacy_timezone,
    range_planner,
    read_auth_catalog,
    refuse_another_timezone,
    splits_by_key,
    tenant_copy,
    timezone_details,
)
from migrator.ops.copy import CopyStats, analyze, copy_in_ranges, copy_table, source_rows_up_to, table_fence
from migrator.ops.copy_checks import check_columns, refuse_inheritance_children
from migrator.ops.inspection import refuse_a_table_gone_since_registration
from migrator.ops.sequences import continue_sequence
from migrator.ops.table_copy import TableCopy, type_differences
from migrator.step_ref import StepRef, Target
from migrator.tables import (
    LEGACY_AUTH_TABLES,
    LEGACY_TENANT_TABLES,
    REFERENCE_TABLES,
    TENANT_DATA_TABLES,
    TenantDataTable,
    reference_table,
)
from tenants import schema_lock
from tenants.models import MigrationState, Tenant

# A table smaller than this (that also fits in one batch) is copied with its indexes and foreign keys
# in place: for a few hundred rows, maintaining them row by row costs a fraction of a millisecond,
# dropping, remembering and rebuilding them about 20 ms of server time and 30 statements (measured
# on 150-row tenant tables), which with thousands of tenants was most of the phase.
DIRECT_COPY_BELOW_ROWS = 1000


def small_table(copy: TableCopy, batch_size: int) -> bool:
    """Whether the source has fewer than DIRECT_COPY_BELOW_ROWS rows and fits in one batch (counted
    no further than that bound)."""
    bound = min(DIRECT_COPY_BELOW_ROWS - 1, batch_size)
    return source_rows_up_to(copy, bound + 1) <= bound


# A smaller table gets no ANALYZE of its own: a plan over a few pages barely depends on statistics,
# autovacuum analyzes it after its first 50 + 10 % rows anyway, and with thousands of tenants the
# ANALYZE calls would cost more than the copies.
ANALYZE_FROM_ROWS = 1000


def mode_of(ctx: MigrationContext, scope: str | None = None) -> MigrationMode:
    """The mode ``scope`` is copied and validated in (``--online``, or an earlier ``data --online``);
    with no scope, the run's."""
    return mode_for(scope, migrating_online=ctx.options.online)


def _copied(stats: CopyStats, message: str, details: CopyDetails) -> StepResult:
    """A copy step's result: the rows the source had and the rows copied, in ``stats.batches`` batches."""
    return StepResult(
        message=message,
        rows_expected=stats.rows_source,
        rows_copied=stats.rows_copied,
        details=CopyDetails(batches=stats.batches, **details),
    )


# Phase 1's step that counted each tenant's legacy tables: a table gone since then is refused, not skipped.
REGISTERED = StepRef("prepare", "register")


class DataPhase(Phase):
    name = "data"
    number = 3
    alters_tables = True
    estimate = "4-8 hours"
    summary = "auth data, reference data merged with id remapping, tenant data in keyset batches, validation"
    tenant_state_on_success = MigrationState.DATA_MIGRATED
    requires = "schemas"
    # Read by cutover and verify (what was validated), the dashboard and the copies' records.
    COPY_AUTH = StepRef(name, "copy_auth")
    COPY_TABLE = StepRef(name, "copy_table")
    VALIDATE = StepRef(name, "validate")
    undone_by_rollback = True
    undone_by_restore = True
    # Hours long: deploys keep running. The schema-change lock is held in shared mode per tenant and per
    # phase-wide step instead (see tenant_context, tenants/schema_lock.py): a deploy waits for the tenants
    # being copied, never finds indexes dropped by a copy, and the next tenant is copied as it left it.
    changes_schemas = False

    def refuse_options(self, ctx: MigrationContext) -> None:
        if not catalog.tracking_table_exists():
            return
        if not ctx.options.online and not ctx.options.validate_only and (scopes := sorted(online_scopes())):
            # An offline copy of the tenants an interrupted online run had not reached yet would miss every
            # write made after it, and their two-way sync would start from it.
            raise MigrationError(
                f"this migration runs online: {len(scopes)} schemas are captured or in two-way sync (e.g. "
                f"{scopes[0]}); rerun `migrate_phase data --online` to go on"
            )
        # After cutover a tenant's legacy tables are archived: validating it again would fail on them and
        # leave a finished migration unfinished for good. (A plain rerun plans nothing for a live tenant.)
        if not ctx.options.validate_only:
            return
        live = Tenant.objects.filter(migration_state=MigrationState.LIVE).order_by("tenant_id")
        if ctx.tenant_filter:
            live = live.filter(tenant_id__in=ctx.tenant_filter)
        first = live.values_list("tenant_id", flat=True).first()
        if first is not None:
            raise MigrationError(
                f"tenant {first} is live ({live.count()} in all): its legacy tables are archived and there is "
                "nothing of it left to validate; select the tenants that are not live with --tenant"
            )

    def plan(self, ctx: MigrationContext) -> list[Step]:
        if ctx.options.legacy_timezone is not None:  # refused before anything runs: an unknown zone, or
            # another zone than some tenant of this run was copied in
            refuse_another_timezone(ctx, legacy_timezone(ctx.options)[0])
        run_mode = mode_of(ctx)
        run_mode.refuse_options(ctx)
        legacy_auth = ctx.config.legacy_auth_schema
        validate_only = ctx.options.validate_only
        with_sql = ctx.options.render_sql
        steps: list[Step] = []
        if not ctx.tenant_filter:
            # Read from the catalog only to show the SQL: the target may change before the step runs.
            auth_catalog = read_auth_catalog(legacy_auth) if with_sql else catalog.NOT_READ
            for table in LEGACY_AUTH_TABLES:
                copy = auth_copy(legacy_auth, table, auth_catalog) if with_sql else None
                if not validate_only:
                    steps.append(
                        self.step(
                            self.COPY_AUTH.kind,
                            f"Copy {legacy_auth}.{table} into auth.{table} (same ids)",
                            target=table,
                            sql=(copy.preview(),) if copy else (),
                        )
                    )
            if not validate_only:
                steps += run_mode.scope_steps(self, legacy_auth, None)
            for table in LEGACY_AUTH_TABLES:
                copy = auth_copy(legacy_auth, table, auth_catalog) if with_sql else None
                steps.append(
                    self.step(
                        self.VALIDATE.kind,
                        f"Compare {legacy_auth}.{table} and auth.{table}: counts and fingerprints",
                        target=Target.auth_table(table),
                        sql=(db.render(fingerprint.source_query(copy)),) if copy else (),
                    )
                )
        if not validate_only:
            tenant_ids = [t.tenant_id for t in ctx.registered_tenants]
            for ref in REFERENCE_TABLES:
                step = self.step(
                    "merge_reference",
                    f"Merge every tenant's {ref.legacy_table} into {ref.schema}.{ref.table} by "
                    f"{ref.merge_key}, keeping an old -> new id map",
                    target=ref.legacy_table,
                )
                # A tenant registered (or left out by --tenant) since the last merge still needs one.
                steps.append(replace(step, rerun=True) if reference.needs_merge(ref, tenant_ids) else step)
        for tenant in ctx.registered_tenants:
            for spec in TENANT_DATA_TABLES:
                if not validate_only:
                    steps.append(
                        self.tenant_step(
                            self.COPY_TABLE.kind,
                            f"Copy {tenant.schema}.{spec.legacy_table} into {tenant.schema}.{spec.target_table} "
                            f"in batches of {ctx.batch_size}, then rebuild indexes and foreign keys, carry the "
                            "legacy table's own CHECK and unique constraints",
                            tenant,
                            target=spec.target_table,
                            sql=(tenant_copy(tenant, spec).preview(),) if with_sql else (),
                        )
                    )
            if not validate_only:
                steps += run_mode.scope_steps(self, tenant.schema, tenant.tenant_id)
            for spec in TENANT_DATA_TABLES:
                steps.append(
                    self.tenant_step(
                        self.VALIDATE.kind,
                        f"Compare {tenant.schema}.{spec.legacy_table} and {spec.target_table}: counts and fingerprints",
                        tenant,
                        target=spec.target_table,
                    )
                )
        return steps

    def step_kinds(self) -> dict[str, StepKind]:
        return {
            "start_two_way_sync": StepKind(self._start_two_way_sync, self._check_two_way_sync),
            self.COPY_AUTH.kind: StepKind(self._copy_auth_table, self._check_all_rows_copied, moves_rows=True),
            "merge_reference": StepKind(self._merge_reference_table, self._check_every_reference_mapped),
            self.COPY_TABLE.kind: StepKind(self._copy_tenant_table, self._check_all_rows_copied, moves_rows=True),
            # Reads only: recorded with the tenant's state at the end of the tenant (no RUNNING row).
            self.VALIDATE.kind: StepKind(self._validate_table, self._check_validation, rerunnable=True),
        }

    def tenant_weights(self, ctx: MigrationContext, tenant_ids: list[str]) -> dict[str, float]:
        """Each tenant's legacy rows as the planner estimates them: the largest tenants start first."""
        schemas = {TenantRef(t).schema: t for t in tenant_ids}
        found = ranges.estimated_rows(list(schemas), list(LEGACY_TENANT_TABLES))
        return {schemas[schema]: rows for schema, rows in found.items()}

    @contextmanager
    def tenant_context(self, ctx: MigrationContext, tenant_id: str) -> Iterator[catalog.SchemaCatalog]:
        """A tenant's steps hold the schema-change lock in shared mode, so that no deploy changes its
        schema while they read its tables' columns and drop and rebuild their indexes and foreign keys;
        and, changing no table of the schema (only indexes and constraints), have their catalog questions
        answered from one read of the schema's tables and columns, made once the lock is held (each
        step gets it as ``reporter.tenant``: see :func:`catalog.read_for`)."""
        with schema_lock.shared_lock(self.name):
            yield catalog.read_schemas(TenantRef(tenant_id).schema)

    def apply(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        if step.tenant_id is None:  # the auth copies and reference merges: the shared tables' columns
            with schema_lock.shared_lock(self.name):
                return super().apply(ctx, step, reporter)
        if catalog.read_for(TenantRef(step.tenant_id).schema, reporter.tenant) is not catalog.NOT_READ:
            return super().apply(ctx, step, reporter)
        with self.tenant_context(ctx, step.tenant_id) as schema_catalog:  # a tenant's step run on its own
            return super().apply(ctx, step, replace(reporter, tenant=schema_catalog))

    def _start_two_way_sync(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        return mode_of(ctx, step.target.name).start_sync(ctx, step.target.name, reporter)

    def _check_two_way_sync(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        return [] if twoway.is_synced(step.target.name) else [f"{step.target.name} is not in two-way sync"]

    def _copy_auth_table(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        table = step.target.name
        legacy = ctx.config.legacy_auth_schema
        # Read once the schema-change lock is held (see apply): the copy changes indexes, no table.
        schema_catalog = read_auth_catalog(legacy)
        if not schema_catalog.table_exists(legacy, table):
            raise MigrationError(
                f"legacy table {legacy}.{table} does not exist; restore it or set SALESFLOW_LEGACY_AUTH_SCHEMA "
                "to the schema that holds the auth tables"
            )
        refuse_inheritance_children(
            legacy,
            [table],
            f"legacy auth schema {legacy}",
            "move the child's rows into the parent (and drop the child), then rerun the phase",
        )
        copy = auth_copy(legacy, table, schema_catalog)
        if not schema_catalog.table_exists(copy.target_schema, copy.target_table):
            raise MigrationError(
                f"{copy.target_schema}.{copy.target_table} does not exist; run `migrate_phase schemas` first"
            )
        check_columns(copy)
        copy.refuse_unfillable()
        copy = in_legacy_timezone(ctx, copy)
        copy_mode = mode_of(ctx, legacy)
        copy_mode.before_copy(ctx, legacy, [table], reporter)
        stats = copy_table(copy, ctx.batch_size, reporter)
        # Same ids as legacy: new ones continue after every id the legacy sequence ever issued.
        sequence = continue_sequence_of(copy)
        applied = copy_mode.after_copy(ctx, legacy, [table], reporter)
        return _copied(stats, f"{stats.rows_copied} rows", CopyDetails(**timezone_details(copy), **sequence, **applied))

    def _merge_reference_table(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        policy = ctx.options.reference_conflicts
        ref = reference_table(step.target.name)
        tenant_ids = [t.tenant_id for t in ctx.registered_tenants]
        run_mode = mode_of(ctx)  # every tenant's rows in one step: the run's mode
        for tenant_id in tenant_ids:
            run_mode.before_copy(ctx, TenantRef(tenant_id).schema, [ref.legacy_table], reporter)
        result = reference.merge_reference_table(ref, tenant_ids, policy)
        for tenant_id in tenant_ids:
            run_mode.mark_copied(ctx, TenantRef(tenant_id).schema, [ref.legacy_table])
        # Shared rows get new ids (the map translates the old ones): no legacy sequence counts here.
        sequence = continue_sequence(ref.shared_schema, ref.table)
        message = (
            f"{len(result.tenants_merged)} tenants, {result.rows_staged} rows -> {result.rows_added} new shared rows"
        )
        if result.discarded:
            message += f"; {len(result.discarded)} conflicting variants discarded (first-wins)"
        if result.tenants_without_table:
            message += f"; no {ref.legacy_table} table in {len(result.tenants_without_table)} tenants"
        return StepResult(
            message=message,
            rows_expected=result.rows_staged,
            rows_copied=result.mapped,
            details=MergeReferenceDetails(
                tenants_merged=len(result.tenants_merged),
                rows_added=result.rows_added,
                discarded_variants=result.discarded,
                tenants_without_table=result.tenants_without_table,
                policy=policy,
                **sequence,
            ),
        )

    def _copy_tenant_table(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        tenant = TenantRef(step.tenant_id or "")
        spec = next(t for t in TENANT_DATA_TABLES if t.target_table == step.target.name)
        # Every legacy table of the tenant, at each of its copies: its first copy refuses before any is made.
        refuse_inheritance_children(
            tenant.schema,
            list(LEGACY_TENANT_TABLES),
            f"tenant schema {tenant.schema}",
            "move the child's rows into the parent (and drop the child) or leave the tenant out with "
            f"--skip-schema {tenant.schema}",
        )
        schema_catalog = catalog.read_for(tenant.schema, reporter.tenant)
        if not schema_catalog.table_exists(tenant.schema, spec.legacy_table):
            refuse_a_table_gone_since_registration(REGISTERED, tenant.schema, tenant.tenant_id, spec.legacy_table)
            return StepResult(
                message=f"no legacy table {tenant.schema}.{spec.legacy_table}: nothing to copy",
                rows_expected=0,
                rows_copied=0,
                details=CopyDetails(legacy_table_missing=True),
            )
        if not schema_catalog.table_exists(tenant.schema, spec.target_table):
            raise MigrationError(
                f"{tenant.schema}.{spec.target_table} does not exist; run `migrate_phase schemas` first"
            )
        copy = tenant_copy(tenant, spec, schema_catalog)
        check_columns(copy)
        copy.refuse_unfillable()  # before the indexes are dropped
        copy = in_legacy_timezone(ctx, copy)
        leave = ctx.options.leave_constraints
        carried.refuse_breaking_checks(tenant.schema, spec.legacy_table, spec.target_table, leave)
        copy_mode = mode_of(ctx, tenant.schema)
        copy_mode.before_copy(ctx, tenant.schema, [spec.legacy_table], reporter)
        merged = self._merge_new_reference_rows(ctx, tenant, spec, schema_catalog)
        # The fence covers the constraints too: a second runner must not drop or rebuild them mid-copy.
        with table_fence(tenant.schema, spec.target_table):
            # A small table is copied into its indexes and constraints as they are (checked row by row);
            # a larger one without them, which are rebuilt once after the load (see ops/constraints.py).
            # Either way the table ends with the same indexes, primary key and validated foreign keys,
            # and whatever an earlier attempt deferred is rebuilt below.
            small = small_table(copy, ctx.batch_size)
            deferred = 0 if small else constraints.defer_constraints(tenant.schema, spec.target_table)
            # A large table: its key ranges on every free connection of the run. Online too: the capture
            # installed before the copy records every write behind the ranges, applied once all are in.
            if splits_by_key(copy):
                stats = copy_in_ranges(copy, ctx.batch_size, reporter, range_planner(copy, ctx.config.range_rows))
            else:
                stats = copy_table(copy, ctx.batch_size, reporter, fence_held=True)
            advice = (
                f"fix those rows in {tenant.schema}.{spec.legacy_table}, then run `migrate_phase rollback "
                f"--tenant {tenant.tenant_id}`, `migrate_phase schemas` and `migrate_phase data`"
            )
            # a table copied in ranges: its indexes built by every free connection too
            parallel = reporter.parallel if stats.ranges else None

            def rebuilding(done: int, total: int) -> None:
                reporter.progress(done, total, "indexes and foreign keys rebuilt")

            rebuilt = copy_mode.restore_before_apply(tenant.schema, spec.target_table, advice, parallel, rebuilding)
            applied = copy_mode.after_copy(ctx, tenant.schema, [spec.legacy_table], reporter)
            rebuilt += constraints.restore_constraints(
                tenant.schema, spec.target_table, advice=advice, parallel=parallel, progress=rebuilding
            )
            # After the rebuild: the new table's own indexes are all there to be compared with, and a
            # carried unique index is built once over the copied rows.
            carry = carried.carry_constraints(tenant.schema, spec.legacy_table, spec.target_table, leave)
        sequence = continue_sequence_of(copy)  # same ids as legacy, as for auth
        if stats.rows_source >= ANALYZE_FROM_ROWS:
            analyze(tenant.schema, spec.target_table, schema_catalog=schema_catalog)
        online_applied = copy_mode.catch_up(ctx, tenant.schema, applied, reporter)
        resumed = f", resumed after id {stats.resumed_after[0]}" if stats.resumed_after else ""
        if stats.ranges:
            resumed = f" over {stats.ranges} key ranges" + (
                f", {len(stats.resumed_after)} of them resumed" if stats.resumed_after else ""
            )
        return _copied(
            stats,
            f"{stats.rows_copied} rows in {stats.batches} batches{resumed}",
            CopyDetails(
                deferred=deferred,
                rebuilt=rebuilt,
                resumed_after=stats.resumed_after,
                **(CopyDetails(ranges=stats.ranges) if stats.ranges else CopyDetails()),
                **timezone_details(copy),
                **sequence,
                **carry.details(),
                **merged,
                **online_applied,
            ),
        )

    @staticmethod
    def _merge_new_reference_rows(
        ctx: MigrationContext, tenant: TenantRef, spec: TenantDataTable, schema_catalog: catalog.SchemaCatalog
    ) -> ReferenceRowsDetails:
        """Merge the tenant's reference rows that have no map entry yet (added since the merge_reference
        steps ran), so its rows never point at a reference row the map does not know."""
        mapped: dict[str, int] = {}
        discarded: list[dict[str, object]] = []
        for ref_name in spec.remap.values():
            ref = reference_table(ref_name)
            # Usually every row was merged by the merge_reference steps: one look, no merge transaction.
            # (A row added after this look has no map entry: the copy refuses it, as it would before.)
            if not reference.needs_merge(ref, [tenant.tenant_id]):
                continue
            policy = ctx.options.reference_conflicts
            result = reference.merge_reference_table(ref, [tenant.tenant_id], policy, schema_catalog)
            if result.mapped:
                mapped[ref_name] = result.mapped
            discarded += result.discarded
        details = ReferenceRowsDetails(reference_rows_merged=mapped) if mapped else ReferenceRowsDetails()
        if discarded:
            details["discarded_variants"] = discarded
        return details

    def _validate_table(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        if step.tenant_id is None:
            table = step.target.name  # a legacy auth table (Target.auth_table)
            legacy = ctx.config.legacy_auth_schema
            copy = auth_copy(legacy, table, read_auth_catalog(legacy))
        else:
            tenant = TenantRef(step.tenant_id)
            spec = next(t for t in TENANT_DATA_TABLES if t.target_table == step.target.name)
            schema_catalog = catalog.read_for(tenant.schema, reporter.tenant)
            if not schema_catalog.table_exists(tenant.schema, spec.legacy_table):
                refuse_a_table_gone_since_registration(REGISTERED, tenant.schema, tenant.tenant_id, spec.legacy_table)
                rows = schema_catalog.row_count(tenant.schema, spec.target_table)
                return StepResult(message=f"no legacy table; target has {rows} rows", rows_expected=0, rows_copied=rows)
            copy = tenant_copy(tenant, spec, schema_catalog)
        copy = in_legacy_timezone(ctx, copy)
        # Both sides, and the keys that differ, are read in one snapshot: a legacy row committed between
        # two reads would otherwise show as missing from the target although nothing is wrong.
        copy_mode = mode_of(ctx, copy.source_schema)
        ranged = None
        if (
            step.tenant_id is not None
            and splits_by_key(copy)
            and copy_mode.may_compare_in_ranges(copy)
            and (ranged := compare_in_ranges(copy, ctx.config.range_rows, reporter))
        ):  # offline, or in two-way sync: each range's both sides are equal in any one statement
            comparison: fingerprint.Comparison = ranged
        else:
            comparison = copy_mode.compare(ctx, copy)
        source, target = comparison.source, comparison.target
        details: ValidateDetails = {**timezone_details(copy)}
        if ranged is not None:
            details["ranges"] = ranged.ranges
        converted = [str(d) for d in type_differences(copy)]
        if converted:
            details["columns_of_another_type"] = converted
        if not comparison.matches:
            details["differing_keys"] = [list(k) for k in comparison.differing_keys]
        missing = constraints.missing_constraints(copy.target_schema, copy.target_table)
        if missing:
            details["constraints_missing"] = missing
        message = f"{target.rows} rows, fingerprint {'matches' if source == target else 'DIFFERS'}"
        if converted:
            message += f"; compared in the legacy types' terms: {', '.join(converted)}"
        return StepResult(
            message=message,
            rows_expected=source.rows,
            rows_copied=target.rows,
            source_fingerprint=source,
            target_fingerprint=target,
            details=details,
        )

    def _check_all_rows_copied(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        if not mode_of(ctx).expects_every_row(result):
            return []
        if result.rows_copied != result.rows_expected:
            # The copy already picked up legacy rows written behind it; what is left is rows that
            # vanished from the legacy table after they were copied, which no resume can undo.
            redo = (
                f"`migrate_phase rollback --tenant {step.tenant_id}`, then phases schemas and data"
                if step.tenant_id
                else "`migrate_phase rollback`, then phases schemas and data"
            )
            return [
                (
                    f"copied {result.rows_copied} rows, expected {result.rows_expected}: the legacy table changed "
                    "while "
                    f"it was copied; stop writing to it and run {redo}"
                )
            ]
        return []

    def _check_every_reference_mapped(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        if not mode_of(ctx).maps_every_reference():
            return []
        unmapped = reference.unmapped_count(
            reference_table(step.target.name), [t.tenant_id for t in ctx.registered_tenants]
        )
        return [f"{unmapped} legacy {step.target.name} rows have no shared id"] if unmapped else []

    def _check_validation(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        problems = []
        details = read_details(ValidateDetails, result.details)
        if result.source_fingerprint != result.target_fingerprint:
            sample = details.get("differing_keys") or []
            converted = details.get("columns_of_another_type")
            problems.append(
                f"content differs: source {result.source_fingerprint}, target {result.target_fingerprint}; "
                f"differing keys (first {len(sample)}): "
                f"{', '.join(str(k[0] if len(k) == 1 else tuple(k)) for k in sample)}"
                + (f"; legacy columns of another type: {', '.join(converted)}" if converted else "")
            )
        if missing := details.get("constraints_missing"):
            problems.append("indexes or foreign keys not rebuilt/validated: " + ", ".join(missing))
        return problems
