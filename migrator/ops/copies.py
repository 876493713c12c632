"""The copies of phase 3 as every phase that compares, syncs or cuts over builds them: which legacy table goes
into which new table with which columns, remaps and legacy time zone, and how both sides are compared."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from django.db.models import QuerySet

from migrator import catalog
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.details import LEGACY_TIMEZONE, SequenceDetails, TimezoneDetails
from migrator.core.errors import MigrationError
from migrator.core.steps import VALIDATE_RANGE, KeyRange, StepReporter, StepResult
from migrator.models import MigrationRecord, Status
from migrator.ops import fingerprint, ranges
from migrator.ops.conversions import LEGACY_TIMEZONE_OPTION, legacy_timezone
from migrator.ops.sequences import continue_sequence
from migrator.ops.table_copy import Remap, TableCopy, zoned_columns
from migrator.ops.target_columns import target_columns
from migrator.tables import LEGACY_AUTH_TABLES, TableKind, TenantDataTable, legacy_table
from salesflow.layout import tenant_id_from_schema


def auth_copy(legacy_schema: str, table: str, schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ) -> TableCopy:
    """The copy of a legacy auth table, writing the target's columns as the catalog has them now
    (``schema_catalog``: :func:`read_auth_catalog`'s, when the caller read it; the copy asks it too)."""
    entry = legacy_table(table, TableKind.AUTH)
    columns = target_columns((legacy_schema, table), (str(entry.schema), entry.table), entry.model, schema_catalog)
    return TableCopy(
        legacy_schema,
        table,
        str(entry.schema),
        entry.table,
        columns.copied,
        key=entry.key,
        fills=columns.fills,
        schema_catalog=schema_catalog,
    )


def read_auth_catalog(legacy_schema: str) -> catalog.SchemaCatalog:
    """The legacy auth schema's tables and those of the schema its tables are copied into, in one read (see
    :class:`catalog.SchemaCatalog` for how long it holds)."""
    targets = {str(legacy_table(table, TableKind.AUTH).schema) for table in LEGACY_AUTH_TABLES}
    return catalog.read_schemas(legacy_schema, *sorted(targets))


def tenant_copy(
    tenant: TenantRef, spec: TenantDataTable, schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ
) -> TableCopy:
    """The copy of a tenant's legacy table, writing the target's columns as the catalog has them now
    (``schema_catalog``: the tenant schema's tables, read for its steps; the copy asks it too)."""
    source, target = (tenant.schema, spec.legacy_table), (tenant.schema, spec.target_table)
    columns = target_columns(source, target, spec.model, schema_catalog)
    return TableCopy(
        tenant.schema,
        spec.legacy_table,
        tenant.schema,
        spec.target_table,
        columns.copied,
        remaps=tuple(Remap(column, tenant.tenant_id, ref) for column, ref in spec.remap.items()),
        fills=columns.fills,
        schema_catalog=schema_catalog,
    )


# A copy's recorded legacy time zone, as a lookup into its tracking row's JSON.
_RECORDED_ZONE = f"details__{LEGACY_TIMEZONE}"


def _zoned_copies() -> QuerySet[MigrationRecord]:
    """Completed copies (not rolled back) that read legacy timestamps in a legacy zone."""
    return (
        MigrationRecord.objects.latest_attempts()
        .filter(phase="data", step__in=("copy_table", "copy_auth"), status=Status.COMPLETED)
        .filter(details__has_key=LEGACY_TIMEZONE)
    )


def recorded_timezone(ctx: MigrationContext, scope: str) -> str | None:
    """The legacy zone the scope's completed copies read legacy timestamps in (None: none did)."""
    tenant_id = None if scope == ctx.config.legacy_auth_schema else tenant_id_from_schema(scope)
    zones = _zoned_copies().filter(tenant_id=tenant_id).order_by("-id").values_list(_RECORDED_ZONE)
    return next((str(zone) for (zone,) in zones), None)


def refuse_another_timezone(ctx: MigrationContext, zone: str) -> None:
    """Before anything runs: a ``--legacy-timezone`` other than the one a scope in this run was copied in."""
    copies = _zoned_copies().exclude(**{_RECORDED_ZONE: zone})
    if ctx.tenant_filter:
        copies = copies.filter(tenant_id__in=ctx.tenant_filter)
    found = copies.values_list("tenant_id", _RECORDED_ZONE).first()
    if found is not None:
        tenant_id, recorded = found
        _refuse_timezone(TenantRef(tenant_id).schema if tenant_id else ctx.config.legacy_auth_schema, recorded, zone)


def _refuse_timezone(scope: str, recorded: str, zone: str) -> None:
    raise MigrationError(
        f"{scope}: its legacy timestamps were copied as times of {recorded}, not {zone}; reading the rest in "
        f"{zone} would mix two zones: rerun with --legacy-timezone {recorded} (or roll the tenant back to "
        "copy it again in another zone)"
    )


def scope_timezone(ctx: MigrationContext, scope: str) -> str:
    """The zone a scope's (a tenant schema's or the legacy auth schema's) legacy timestamps are read in.

    The one its earlier copies used, so that copying, validating, syncing and cutting over never read
    one table's timestamps in two zones: a ``--legacy-timezone`` that contradicts it is refused; a
    database setting changed since is not followed.
    """
    zone, origin = legacy_timezone(ctx.options)
    recorded = recorded_timezone(ctx, scope)
    if recorded is None or recorded == zone:
        return zone
    if origin == LEGACY_TIMEZONE_OPTION:
        _refuse_timezone(scope, recorded, zone)
    return recorded


def in_legacy_timezone(ctx: MigrationContext, copy: TableCopy) -> TableCopy:
    """``copy`` reading legacy timestamps in the scope's legacy zone (a copy with none is left as is)."""
    if not zoned_columns(copy):
        return copy
    return replace(copy, legacy_timezone=scope_timezone(ctx, copy.source_schema))


def timezone_details(copy: TableCopy) -> TimezoneDetails:
    zoned = zoned_columns(copy) if copy.legacy_timezone is not None else ()
    return TimezoneDetails(legacy_timezone=copy.legacy_timezone, timestamp_columns=list(zoned)) if zoned else {}


def continue_sequence_of(copy: TableCopy) -> SequenceDetails:
    """A copy that keeps the legacy ids: the new table's sequence continues after the highest id copied
    and after the last value of the legacy table's own sequence, whichever is greater."""
    if copy.key != ("id",):
        return {}
    return continue_sequence(copy.target_schema, copy.target_table, legacy=(copy.source_schema, copy.source_table))


def validation_fingerprints(
    copy: TableCopy, method: str = fingerprint.CURRENT
) -> tuple[fingerprint.Fingerprint, fingerprint.Fingerprint]:
    """Source and target fingerprints as phase 3 validates them; cutover compares against the same pair,
    made the way the recorded pair was (``method``: the recorded fingerprint's)."""
    return fingerprint.both_fingerprints(copy, method)


def compare(copy: TableCopy) -> fingerprint.Comparison:
    """Phase 3's comparison of both sides, in the caller's transaction (a snapshot: see :func:`db.snapshot`)."""
    source, target = validation_fingerprints(copy)
    differing = fingerprint.differing_keys(copy) if source != target else []
    return fingerprint.Comparison(source, target, differing)


def splits_by_key(copy: TableCopy) -> bool:
    """Whether ``copy`` can be split into key ranges: a single integer key."""
    return copy.key == ("id",)


def range_planner(copy: TableCopy, range_rows: int) -> Callable[[int], list[KeyRange]]:
    """Plans ``copy``'s key ranges of ``range_rows`` rows given its source's row count."""

    def plan(rows: int) -> list[KeyRange]:
        return ranges.plan_key_ranges(copy.source_schema, copy.source_table, "id", range_rows, rows)

    return plan


@dataclass(frozen=True)
class RangedComparison(fingerprint.Comparison):
    ranges: int = 0


def compare_in_ranges(
    copy: TableCopy, range_rows: int, reporter: StepReporter, part: str = ""
) -> RangedComparison | None:
    """Both sides of a large table compared range by range on the run's free connections (None: not
    large enough to split). Each range's both sides are read in one statement, so the ranges'
    fingerprints add up to the table's when nothing writes one side alone: the legacy tables are not
    written during an offline run, and a table in two-way sync is written on both sides in the
    writer's own transaction, so every statement sees them equal. ``part``: the table's name, when the
    step compares several tables (see ``StepReporter.ranges``)."""
    parts: dict[int, tuple[fingerprint.Fingerprint, fingerprint.Fingerprint]] = {}

    def plan() -> list[KeyRange]:
        return ranges.plan_key_ranges(copy.source_schema, copy.source_table, "id", range_rows)

    def work(key_range: KeyRange, range_reporter: StepReporter) -> StepResult:
        source, target = fingerprint.both_fingerprints_in_range(copy, key_range.after, key_range.through)
        parts[key_range.index] = (source, target)
        range_reporter.progress(source.rows, key_range.rows_planned)  # the step's rows compared so far
        return StepResult(
            message=f"{target.rows} rows, fingerprint {'matches' if source == target else 'DIFFERS'}",
            rows_expected=source.rows,
            rows_copied=target.rows,
            source_fingerprint=source,
            target_fingerprint=target,
        )

    results = reporter.ranges(VALIDATE_RANGE, plan, work, False, part)
    if results is None:
        return None
    source = fingerprint.combined([parts[r.index][0] for r, _result in results])
    target = fingerprint.combined([parts[r.index][1] for r, _result in results])
    differing = fingerprint.differing_keys(copy) if source != target else []
    return RangedComparison(source, target, differing, ranges=len(results))
