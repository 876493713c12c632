"""The online migration: the work of phases data, cutover, finalize and rollback when it runs online
(:class:`migrator.modes.strategy.OnlineMode` is how data, cutover, rollback and verify reach it).

A *scope* is the legacy auth schema or a tenant schema. Its life (docs/online.md):

1. ``data --online``: change capture on each legacy table before its copy (``ops/capture.py``), the
   copy, the captured changes applied; then :func:`start_two_way_sync`: under a short lock the last
   captured changes are applied, the capture replaced by two-way sync (``ops/twoway.py``) and both
   sides' sequences put into one id space. From then on both sides are real tables that stay equal
   in every snapshot, whichever side the application writes.
2. ``cutover``: :func:`declare_new_primary` compares both sides in one snapshot and records the
   tenant live; nothing is moved or blocked.
3. ``finalize``: :func:`finish_sync` once the old application no longer writes the legacy tables:
   the sync stops, the legacy tables are archived and their dependents carried to the new tables.
4. ``rollback`` before ``finalize``: :func:`stop_sync`, then the new side is dropped as in any rollback
   before cutover. Every write is on the legacy side, whichever side it was made on: nothing is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from migrator import catalog, db
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.details import OnlineApplyDetails, OnlineSwitchDetails
from migrator.core.errors import MigrationError
from migrator.core.steps import StepReporter, StepResult
from migrator.ops import archive, capture, dependents, reference, twoway, twoway_statements
from migrator.ops.copies import (
    RangedComparison,
    auth_copy,
    compare,
    compare_in_ranges,
    continue_sequence_of,
    in_legacy_timezone,
    read_auth_catalog,
    splits_by_key,
    tenant_copy,
)
from migrator.ops.fingerprint import Comparison
from migrator.ops.sequences import interleave_sequences, single_sequence
from migrator.ops.table_copy import TableCopy
from migrator.tables import LEGACY_AUTH_TABLES, REFERENCE_TABLES, TENANT_DATA_TABLES, LegacyTable, legacy_table
from salesflow.layout import tenant_id_from_schema


def scope_copies(
    ctx: MigrationContext, scope: str, schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ
) -> dict[str, TableCopy]:
    """Legacy table -> its copy, for every table of ``scope`` that is copied row by row (the copies
    answer their catalog questions from ``schema_catalog``: see :func:`scope_catalog`)."""
    # Captured rows are applied, and fingerprinted, reading legacy timestamps as the copy did.
    if scope == ctx.config.legacy_auth_schema:
        return {table: in_legacy_timezone(ctx, auth_copy(scope, table, schema_catalog)) for table in LEGACY_AUTH_TABLES}
    tenant = TenantRef(_tenant_id(scope))
    return {
        spec.legacy_table: in_legacy_timezone(ctx, tenant_copy(tenant, spec, schema_catalog))
        for spec in TENANT_DATA_TABLES
    }


def scope_catalog(ctx: MigrationContext, scope: str, handed: object = None) -> catalog.SchemaCatalog:
    """The scope's tables as read for its steps (``handed``: ``StepReporter.tenant``), else read now: a
    tenant's schema, or the legacy auth schema with the schema of the new auth tables. For the caller's
    questions about tables its work does not create, drop, rename or alter (see
    :class:`catalog.SchemaCatalog`): one catalog read instead of a query per question, for each round of
    a sync that follows the writes."""
    held = catalog.read_for(scope, handed)
    if held is not catalog.NOT_READ:
        return held
    if scope == ctx.config.legacy_auth_schema:
        return read_auth_catalog(scope)
    return catalog.read_schemas(scope)


def _tenant_id(scope: str) -> str:
    tenant_id = tenant_id_from_schema(scope)
    if tenant_id is None:
        raise MigrationError(f"{scope} is neither the legacy auth schema nor a tenant schema; it cannot be synced")
    return tenant_id


def _scope_tenant(ctx: MigrationContext, scope: str) -> str | None:
    return None if scope == ctx.config.legacy_auth_schema else _tenant_id(scope)


def scope_merge(
    ctx: MigrationContext, scope: str, schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ
) -> Callable[[], None] | None:
    """Merges the scope's new reference rows (added while it is captured) before its rows are re-copied."""
    if scope == ctx.config.legacy_auth_schema:
        return None
    tenant_id = _tenant_id(scope)
    present = schema_catalog.tables_of(scope)

    def merge() -> None:
        for ref in REFERENCE_TABLES:
            if ref.legacy_table in present:
                reference.merge_reference_table(ref, [tenant_id], ctx.options.reference_conflicts, schema_catalog)

    return merge


# --- phase 3: capture, copy, apply, then two-way sync ----------------------------------------------


def capture_before_copy(ctx: MigrationContext, scope: str, tables: list[str], reporter: StepReporter) -> None:
    """``data --online``: capture writes to these legacy tables before they are read."""
    if not ctx.options.online or twoway.is_synced(scope):
        return
    present = catalog.read_for(scope, reporter.tenant).tables_of(scope)
    for table in tables:
        if table in present:
            capture.install(scope, table, legacy_table(table).key, ctx.options.lock_timeout_ms)


def apply_after_copy(
    ctx: MigrationContext, scope: str, tables: list[str], reporter: StepReporter
) -> OnlineApplyDetails:
    """After the tables' copy: mark them ready and apply what was captured meanwhile (capture stays on)."""
    if not ctx.options.online or twoway.is_synced(scope):
        return {}
    mark_copied(ctx, scope, tables)
    stats = sync_scope(ctx, scope, reporter)
    return {"online": True, "changes_applied": stats.changes}


def mark_copied(ctx: MigrationContext, scope: str, tables: list[str]) -> None:
    """The tables' rows are in the target: their captured changes may be applied from now on."""
    if not ctx.options.online:
        return
    captured = capture.captured_tables(scope)
    for table in tables:
        if table in captured:
            capture.mark_ready(scope, table)


def compare_in_snapshot(ctx: MigrationContext, copy: TableCopy) -> Comparison:
    """Phase 3's validation while writes go on, both sides (and, on a difference, the differing keys)
    read in one snapshot. A captured scope first applies, in that snapshot, every change captured up
    to it; a synced scope's sides are equal in every snapshot."""
    scope = copy.source_schema
    with db.snapshot():
        if not twoway.is_synced(scope):
            copies = scope_copies(ctx, scope, copy.schema_catalog)
            stats = capture.apply_all_locked(scope, copies, scope_merge(ctx, scope, copy.schema_catalog))
            _continue_sequences(copies, stats)
        return compare(copy)


def _continue_sequences(copies: dict[str, TableCopy], stats: capture.ApplyStats) -> None:
    """Rows came in with the legacy ids: the new tables' own inserts continue after them."""
    for table in stats.keys:
        continue_sequence_of(copies[table])


def sync_scope(
    ctx: MigrationContext, scope: str, reporter: StepReporter, schema_catalog: catalog.SchemaCatalog | None = None
) -> capture.ApplyStats:
    """Apply a captured scope's backlog (a synced scope has none: its writes are on both sides at once).

    ``schema_catalog``: what the copies ask. By default the scope's tables as :func:`scope_catalog` reads
    them, for phase 3, whose steps hold the schema-change lock; the sync phase lets deploys run meanwhile
    and passes :data:`catalog.NOT_READ` (each question asked when it arises).
    """
    if twoway.is_synced(scope):
        return capture.ApplyStats()
    if schema_catalog is None:
        schema_catalog = scope_catalog(ctx, scope, reporter.tenant)
    copies = scope_copies(ctx, scope, schema_catalog)
    merge = scope_merge(ctx, scope, schema_catalog)
    stats = capture.apply_changes(scope, copies, ctx.batch_size, merge, fence=reporter.fence)
    _continue_sequences(copies, stats)
    return stats


def is_captured_only(scope: str) -> bool:
    """The scope's writes are captured (phase 3 running), its two-way sync not started yet: the new
    tables lag behind the captured changes."""
    return bool(capture.captured_tables(scope)) and not twoway.is_synced(scope)


def is_online(scope: str) -> bool:
    """The scope is migrated online: captured (phase 3 running) or in two-way sync."""
    return bool(capture.captured_tables(scope)) or twoway.is_synced(scope)


def online_scopes() -> set[str]:
    """Schemas migrated online (captured, or in two-way sync): their legacy tables are still written."""
    return set(capture.captured_scopes()) | set(twoway.synced_scopes())


def check_lock_timeout(lock_timeout_ms: int) -> None:
    """Refuse a ``lock_timeout`` that is not below the server's ``deadlock_timeout``.

    The migrator's short locks (two-way sync started or stopped, finalize's archive) request every
    lock at once and give up after ``lock_timeout``; an application transaction queued behind them
    must not reach its own ``deadlock_timeout`` first, or the deadlock check could abort it.
    """
    if lock_timeout_ms >= twoway.SYNC_LOCK_TIMEOUT_MS:
        raise MigrationError(
            f"--lock-timeout {lock_timeout_ms} ms is not below the {twoway.SYNC_LOCK_TIMEOUT_MS} ms a synced write "
            "waits for a lock: an application write queued behind the migrator could fail; pass a --lock-timeout "
            f"under {twoway.SYNC_LOCK_TIMEOUT_MS} ms"
        )
    deadlock_ms = int(db.fetchvalue("SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'"))
    if lock_timeout_ms >= deadlock_ms:
        raise MigrationError(
            f"--lock-timeout {lock_timeout_ms} ms is not below the server's deadlock_timeout ({deadlock_ms} ms): "
            "an application write waiting behind the migrator could be aborted as a deadlock; "
            f"pass a --lock-timeout under {deadlock_ms} ms"
        )


def _scope_tables(
    ctx: MigrationContext, scope: str, schema_catalog: catalog.SchemaCatalog | None = None
) -> tuple[dict[str, TableCopy], list[str]]:
    """The scope's copies of legacy tables that exist, and its legacy reference tables that exist (the copies
    ask ``schema_catalog``, or a :func:`scope_catalog` read now)."""
    if schema_catalog is None:
        schema_catalog = scope_catalog(ctx, scope)
    present = schema_catalog.tables_of(scope)
    copies = {t: c for t, c in scope_copies(ctx, scope, schema_catalog).items() if t in present}
    refs = (
        []
        if scope == ctx.config.legacy_auth_schema
        else [r.legacy_table for r in REFERENCE_TABLES if r.legacy_table in present]
    )
    return copies, refs


def _lock_scope(scope: str, copies: dict[str, TableCopy], refs: list[str]) -> None:
    """Every legacy and new table of the scope at once, in name order, ACCESS EXCLUSIVE (triggers are
    dropped under it, so it is never upgraded)."""
    relations = [(scope, t) for t in [*copies, *refs]] + [(c.target_schema, c.target_table) for c in copies.values()]
    archive.lock_relations(sorted(set(relations)))


def _references_of(copy: TableCopy) -> list[twoway_statements.ReverseReference]:
    return [twoway_statements.ReverseReference(r.column, legacy_table(r.reference_table)) for r in copy.remaps]


def _ensure_shared_sync(
    ctx: MigrationContext, ref: LegacyTable, scope: str, schema_catalog: catalog.SchemaCatalog
) -> None:
    capture.with_lock_retries(
        lambda: twoway.ensure_shared_reference_sync(ref, scope, schema_catalog),
        ctx.options.lock_timeout_ms,
        f"install the sync trigger of {ref.shared_schema}.{ref.table}",
    )


def start_two_way_sync(ctx: MigrationContext, scope: str, reporter: StepReporter) -> StepResult:
    """Replace the scope's change capture by two-way sync, in one short transaction (retried).

    The backlog is applied first with no lock; then, holding every legacy and new table of the scope
    (``--lock-timeout`` per attempt), the changes captured since are applied, the capture triggers
    replaced by the sync triggers and both sequences put into one id space. Writers wait for that
    transaction only.
    """
    if twoway.is_synced(scope):
        return StepResult(message="two-way sync already on", details=OnlineSwitchDetails(online=True, two_way=True))
    check_lock_timeout(ctx.options.lock_timeout_ms)
    # the sync changes triggers, no table
    schema_catalog = scope_catalog(ctx, scope, reporter.tenant)
    copies, refs = _scope_tables(ctx, scope, schema_catalog)
    tenant_id = _scope_tenant(ctx, scope)
    captured = capture.captured_tables(scope)
    if uncaptured := [table for table in copies if table not in captured]:
        # copied by an offline run: the writes made since that copy are in no capture to apply
        again = f"rollback --tenant {tenant_id}" if tenant_id else "rollback"
        raise MigrationError(
            f"{scope}: {', '.join(uncaptured)} copied offline, without change capture: the writes made since are "
            f"not in the new tables, and two-way sync cannot start from it; run `migrate_phase {again}`, then "
            "phases schemas and data --online again"
        )
    backlog = sync_scope(ctx, scope, reporter)  # no lock: what is left for the lock is small
    twoway.ensure_sync_schema()
    for ref_name in refs:  # once per shared table, in a transaction of its own (it is every tenant's)
        _ensure_shared_sync(ctx, legacy_table(ref_name), scope, schema_catalog)
    merge = scope_merge(ctx, scope, schema_catalog)
    facts = OnlineSwitchDetails()

    def engage() -> None:
        locked_at = time.monotonic()
        _lock_scope(scope, copies, refs)
        problems = [
            f"{table}: its change capture trigger is gone"
            for table in capture.uncaptured(scope, [*copies, *refs])
            if table in capture.captured_tables(scope)
        ]
        stats = capture.apply_all_locked(scope, copies, merge)
        if tenant_id is not None:
            problems += [
                f"{table}: {n} rows without a shared id"
                for table, n in reference.unmapped_counts(
                    [legacy_table(r) for r in refs], tenant_id, schema_catalog
                ).items()
                if n
            ]
        if problems:
            raise MigrationError(
                f"{scope}: two-way sync not started: {'; '.join(problems)}; rerun `migrate_phase data --online`"
            )
        capture.remove_capture(scope, [*copies, *refs], schema_catalog)
        sequences = {}
        for table, copy in copies.items():
            twoway.install_row_sync(
                copy, _references_of(copy), twoway_statements.legacy_children(copy, copies.values())
            )
            if copy.key == ("id",):
                sequences[table] = interleave_sequences((scope, table), (copy.target_schema, copy.target_table))
        for ref_name in refs:
            used_by = [
                (copy.target_table, table, r.column)
                for table, copy in copies.items()
                for r in copy.remaps
                if r.reference_table == ref_name
            ]
            twoway.install_reference_sync(tenant_id or "", scope, legacy_table(ref_name), used_by, schema_catalog)
        tables = {t: f"{c.target_schema}.{c.target_table}" for t, c in copies.items()} | dict.fromkeys(refs, "")
        twoway.record_synced(scope, tenant_id, tables)
        facts.update(
            OnlineSwitchDetails(
                writes_blocked_ms=round((time.monotonic() - locked_at) * 1000, 1),
                last_changes=stats.changes,
                sequences=sequences,
            )
        )

    attempts = capture.with_lock_retries(engage, ctx.options.lock_timeout_ms, f"start the two-way sync of {scope}")
    capture.drop_capture_schema_if_unused()
    return StepResult(
        message=f"two-way sync on: {backlog.changes} + {facts['last_changes']} captured changes applied, "
        f"writes blocked {facts['writes_blocked_ms']} ms, {attempts} attempt(s)",
        details=OnlineSwitchDetails(online=True, two_way=True, attempts=attempts, backlog=backlog.changes, **facts),
    )


# --- phase 6: the new tables declared primary -------------------------------------------------------


def reference_differences(ctx: MigrationContext, scope: str) -> list[str]:
    """The tenant's legacy reference rows that differ from the shared row they are mapped to (or have none)."""
    tenant_id = _tenant_id(scope)
    _copies, refs = _scope_tables(ctx, scope)
    found = []
    for ref_name in refs:
        found += twoway.reference_differences(tenant_id, scope, legacy_table(ref_name))
    return found


def declare_new_primary(ctx: MigrationContext, scope: str, reporter: StepReporter) -> StepResult:
    """Online cutover of one scope: both sides compared, the tenant recorded live.

    No lock and no move: the sync triggers write both sides in the writer's transaction, so any
    snapshot shows them equal; a difference means the sync was bypassed (a trigger dropped or
    disabled, ``session_replication_role = replica``) and refuses the tenant, nothing changed. For the
    same reason a large table is compared range by range on the run's free connections (each range's
    both sides in one statement) and the rest in one snapshot: the comparison of a whale tenant takes
    every connection, not one, and still blocks no write.
    """
    if not twoway.is_synced(scope):
        raise MigrationError(
            f"{scope} is captured but its two-way sync was never started: run `migrate_phase data --online` "
            "to the end, then cutover"
        )
    missing = twoway.triggers_missing(scope)
    if missing:
        raise MigrationError(
            f"{scope}: the two-way sync trigger of {', '.join(missing)} is gone or disabled, so writes since then "
            "are on one side only; nothing was switched: roll the tenant back (`migrate_phase rollback --tenant`) "
            "and migrate it again"
        )
    copies, _refs = _scope_tables(ctx, scope)
    compared: dict[str, Comparison] = {}
    if scope != ctx.config.legacy_auth_schema:
        for table, copy in copies.items():
            if splits_by_key(copy) and (
                ranged := compare_in_ranges(copy, ctx.config.range_rows, reporter, copy.target_table)
            ):
                compared[table] = ranged
    with db.snapshot():
        compared |= {table: compare(copy) for table, copy in copies.items() if table not in compared}
        differences = reference_differences(ctx, scope) if scope != ctx.config.legacy_auth_schema else []
    differing = [
        f"{table}: legacy {c.source.rows} rows {c.source}, new {c.target.rows} rows {c.target}"
        + (
            f", differing keys {', '.join(str(k[0] if len(k) == 1 else k) for k in c.differing_keys)}"
            if c.differing_keys
            else ""
        )
        for table, c in compared.items()
        if not c.matches
    ]
    if differing:
        raise MigrationError(
            f"{scope}: the new tables differ from the legacy ones: {'; '.join(differing)}; nothing was switched"
        )
    in_ranges = {t: c.ranges for t, c in compared.items() if isinstance(c, RangedComparison)}
    discarded: list[str] = []
    if differences:
        if ctx.options.reference_conflicts != "first-wins":
            raise MigrationError(
                f"{scope}: reference rows edited during the online window differ from the shared rows: "
                f"{'; '.join(differences[:5])}{'; ...' if len(differences) > 5 else ''}; nothing was switched: "
                "edit the legacy row back to the shared values, or rerun cutover with --reference-conflicts first-wins "
                "(the shared row's values win for this tenant)"
            )
        discarded = differences
    details = OnlineSwitchDetails(
        online=True, two_way=True, writes_blocked_ms=0, compared={t: str(c.target) for t, c in compared.items()}
    )
    if in_ranges:
        details["compared_in_ranges"] = in_ranges
    if discarded:
        details["discarded_reference_variants"] = discarded
    return StepResult(
        message=f"new tables primary: {sum(c.target.rows for c in compared.values())} rows equal on both sides; "
        "legacy tables stay in two-way sync until finalize",
        details=details,
    )


# --- finalize: sync stopped, legacy tables archived --------------------------------------------------


def finish_sync(ctx: MigrationContext, scope: str, owner: str, accepted: Collection[str] = ()) -> StepResult:
    """Stop the scope's two-way sync and archive its legacy tables, carrying their dependents to the new
    tables (as an offline cutover does), in one transaction with bounded lock waits (retried).

    A tenant's legacy reference rows that differ from their shared rows (edited by the old application
    since cutover: the shared rows do not follow a legacy row other tenants share) refuse it, as at cutover,
    unless its cutover accepted that difference (``accepted``) or --reference-conflicts first-wins is given:
    archived, such an edit would be lost without a word."""
    check_lock_timeout(ctx.options.lock_timeout_ms)
    copies, refs = _scope_tables(ctx, scope)
    legacy = [*copies, *refs]
    is_auth = scope == ctx.config.legacy_auth_schema
    found = dependents.of_tables(scope, legacy)
    dependents.refuse_uncarried(scope, found, ctx.options.leave_dependents)
    facts = OnlineSwitchDetails()

    def finish() -> None:
        locked_at = time.monotonic()
        _lock_scope(scope, copies, refs)
        if not is_auth and ctx.options.reference_conflicts != "first-wins":
            edited = [d for d in reference_differences(ctx, scope) if d not in accepted]
            if edited:
                raise MigrationError(
                    f"{scope}: reference rows edited since cutover differ from the shared rows: "
                    f"{'; '.join(edited[:5])}{'; ...' if len(edited) > 5 else ''}; nothing was archived: edit the "
                    "legacy row back to the shared values (or the shared row to the legacy ones), or rerun finalize "
                    "with --reference-conflicts first-wins (the shared row's values win for this tenant)"
                )
        twoway.remove_sync(scope)
        sequences = {
            table: single_sequence((c.target_schema, c.target_table), (scope, table))
            for table, c in copies.items()
            if c.key == ("id",)
        }
        dependents.detach_foreign_keys(found)
        moved = archive.archive_tables(scope, owner, legacy, ctx.config.archive_schema, drop=False)
        new_tables = {(scope, t): c.target for t, c in copies.items()}
        carried = dependents.carry(
            found, new_tables, ctx.options.leave_dependents, archive.archived_tables(moved, scope)
        )
        facts.update(
            OnlineSwitchDetails(
                archived=moved,
                sequences=sequences,
                dependents_carried=carried,
                writes_blocked_ms=round((time.monotonic() - locked_at) * 1000, 1),
                legacy_schema_dropped=archive.drop_schema_if_empty(scope) if is_auth else False,
            )
        )

    attempts = capture.with_lock_retries(finish, ctx.options.lock_timeout_ms, f"finalize {scope}")
    return StepResult(
        message=f"two-way sync stopped, {len(facts['archived'])} legacy tables archived "
        f"(writes blocked {facts['writes_blocked_ms']} ms, {attempts} attempt(s))",
        details=OnlineSwitchDetails(online=True, attempts=attempts, **facts),
    )


def finish_shared_sync() -> None:
    """After the last scope: the shared tables' triggers and the sync schema go."""
    twoway.remove_shared_reference_sync_if_unused(REFERENCE_TABLES)
    twoway.drop_sync_schema_if_unused()


# --- rollback before finalize ------------------------------------------------------------------------


def rollback_refusals(ctx: MigrationContext, scopes: list[str]) -> list[str]:
    """What a rollback of these synced scopes would lose: values in new-table columns the legacy tables
    lack (added by a deploy). Checked for every scope before any is changed."""
    problems = []
    for scope in scopes:
        copies, _refs = _scope_tables(ctx, scope)
        for table, copy in copies.items():
            for column, rows in twoway.values_only_on_new_side(copy).items():
                problems.append(
                    f"{copy.target_schema}.{copy.target_table}.{column}: {rows} rows hold values the legacy table "
                    f"{scope}.{table} has no column for"
                )
    return problems


def stop_sync(ctx: MigrationContext, scope: str) -> StepResult:
    """Rollback of a synced scope: sync triggers gone, the new tables refusing writes until the rollback drops
    them, and the legacy sequences back to steps of 1 past every id issued, in one transaction with bounded
    lock waits (retried); the legacy tables hold every write."""
    check_lock_timeout(ctx.options.lock_timeout_ms)
    copies, refs = _scope_tables(ctx, scope)
    twoway.ensure_sync_schema()  # this release's functions, the refusal of writes to the new tables among them
    facts = OnlineSwitchDetails()

    def stop() -> None:
        _lock_scope(scope, copies, refs)
        facts["triggers_dropped"] = twoway.remove_sync(scope)
        twoway.refuse_writes_to_new_tables(copies.values())
        facts["sequences"] = {
            table: single_sequence((scope, table), (c.target_schema, c.target_table))
            for table, c in copies.items()
            if c.key == ("id",)
        }

    attempts = capture.with_lock_retries(stop, ctx.options.lock_timeout_ms, f"stop the two-way sync of {scope}")
    return StepResult(
        message=f"two-way sync of {scope} stopped ({attempts} attempt(s))",
        details=OnlineSwitchDetails(attempts=attempts, **facts),
    )


def remove_capture_of(scope: str) -> None:
    """Rollback before two-way sync: the scope's capture triggers and rows go (caller's transaction)."""
    capture.remove_capture(scope, list(capture.captured_tables(scope)))
