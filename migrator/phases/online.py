"""The online migration's hooks into phases data and cutover, and what sync and finalize share.

A *scope* is a schema whose legacy tables are captured: the legacy auth schema or a tenant schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from psycopg import sql

from migrator import catalog, db
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.errors import MigrationError
from migrator.core.steps import StepReporter, StepResult
from migrator.models import FindingKind
from migrator.ops import archive, capture, compat, dependents, fingerprint, reference
from migrator.ops.copy import TableCopy
from migrator.ops.fingerprint import Comparison
from migrator.tables import LEGACY_AUTH_TABLES, REFERENCE_TABLES, TENANT_DATA_TABLES, legacy_table
from salesflow.layout import tenant_id_from_schema


def scope_copies(ctx: MigrationContext, scope: str) -> dict[str, TableCopy]:
    """Legacy table -> its copy, for every table of ``scope`` that is copied row by row."""
    from migrator.phases.data import auth_copy, in_legacy_timezone, tenant_copy  # data imports this module

    # Captured rows are applied, and fingerprinted, reading legacy timestamps as the copy did.
    if scope == ctx.config.legacy_auth_schema:
        return {table: in_legacy_timezone(ctx, auth_copy(scope, table)) for table in LEGACY_AUTH_TABLES}
    tenant = TenantRef(_tenant_id(scope))
    return {spec.legacy_table: in_legacy_timezone(ctx, tenant_copy(tenant, spec)) for spec in TENANT_DATA_TABLES}


def _tenant_id(scope: str) -> str:
    tenant_id = tenant_id_from_schema(scope)
    if tenant_id is None:
        raise MigrationError(f"{scope} is neither the legacy auth schema nor a tenant schema; it cannot be synced")
    return tenant_id


def scope_merge(ctx: MigrationContext, scope: str) -> Callable[[], None] | None:
    """Merges the scope's new reference rows (added while it is captured) before its rows are re-copied."""
    if scope == ctx.config.legacy_auth_schema:
        return None
    tenant_id = _tenant_id(scope)
    present = catalog.tables_by_schema([scope])[scope]

    def merge() -> None:
        for ref in REFERENCE_TABLES:
            if ref.legacy_table in present:
                reference.merge_reference_table(ref, [tenant_id], ctx.options.reference_conflicts)

    return merge


def capture_before_copy(ctx: MigrationContext, scope: str, tables: list[str]) -> None:
    """``data --online``: capture writes to these legacy tables before they are read."""
    if not ctx.options.online:
        return
    present = catalog.tables_by_schema([scope])[scope]
    for table in tables:
        if table in present:
            capture.install(scope, table, legacy_table(table).key, ctx.options.lock_timeout_ms)


def apply_after_copy(ctx: MigrationContext, scope: str, tables: list[str], reporter: StepReporter) -> dict[str, object]:
    """After the tables' copy: mark them ready and apply what was captured meanwhile (capture stays on)."""
    if not ctx.options.online:
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
    """Phase 3's validation while writes go on: every change captured up to one snapshot applied, then
    both sides fingerprinted (and, on a difference, the differing keys listed) in that same snapshot,
    so they must match exactly."""
    from migrator.phases.data import compare  # data imports this module

    scope = copy.source_schema
    with db.snapshot():
        copies = scope_copies(ctx, scope)
        stats = capture.apply_all_locked(scope, copies, scope_merge(ctx, scope))
        _continue_sequences(copies, stats)
        return compare(copy)


def _continue_sequences(copies: dict[str, TableCopy], stats: capture.ApplyStats) -> None:
    """Rows came in with the legacy ids: the new tables' own inserts (verify's CRUD check) continue after them
    and after every id the legacy sequences issued meanwhile."""
    from migrator.phases.data import continue_sequence_of  # data imports this module

    for table in stats.keys:
        continue_sequence_of(copies[table])


def sync_scope(ctx: MigrationContext, scope: str, reporter: StepReporter) -> capture.ApplyStats:
    copies = scope_copies(ctx, scope)
    stats = capture.apply_changes(scope, copies, ctx.batch_size, scope_merge(ctx, scope), fence=reporter.fence)
    _continue_sequences(copies, stats)
    return stats


def is_online(scope: str) -> bool:
    return bool(capture.captured_tables(scope))


def switched(scope: str) -> bool:
    """The scope's online cutover committed: its legacy names are compatibility views."""
    return bool(compat.compat_views(scope))


def check_lock_timeout(lock_timeout_ms: int) -> None:
    """Refuse a ``lock_timeout`` that is not below the server's ``deadlock_timeout`` (see :func:`switch_scope`)."""
    deadlock_ms = int(db.fetchvalue("SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'"))
    if lock_timeout_ms >= deadlock_ms:
        raise MigrationError(
            f"--lock-timeout {lock_timeout_ms} ms is not below the server's deadlock_timeout ({deadlock_ms} ms): "
            "an application write waiting behind the cutover could be aborted as a deadlock; "
            f"pass a --lock-timeout under {deadlock_ms} ms"
        )


def _column_shapes(scope: str, tables: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each table's columns (name, type) in order, as the catalog says now."""
    return {table: [(c.name, c.data_type) for c in catalog.columns(scope, table)] for table in tables}


def switch_scope(ctx: MigrationContext, scope: str, tables: list[str], owner: str) -> StepResult:
    """The online cutover of one scope, in one short transaction (retried when a lock is not granted in time).

    First, with no lock, the backlog is applied and both sides compared in full in one snapshot. Then,
    in the switch's transaction, the legacy tables are locked ACCESS EXCLUSIVE (the renames need it)
    first, in one statement, in name order, waiting at most ``lock_timeout``; the changes captured
    since are applied and only their rows compared; the legacy tables are archived, their names made
    compatibility views, and the capture removed. Either all of it commits or none of it. Writes and
    reads of the tenant's legacy tables wait for the switch.

    Taking a weaker lock first (SHARE ROW EXCLUSIVE, which lets reads go on) and ACCESS EXCLUSIVE
    later deadlocked with an application transaction that had read one of the tables and then wrote
    another: it waited for the weaker lock, the switch then waited for its read lock, and the
    application, waiting longer, was the one the deadlock detector aborted. With every lock
    requested at the start, a writer can only wait behind locks the switch already holds while the
    switch itself waits, and the switch's wait ends (granted, or ``lock_timeout`` and a retry from
    scratch) before the writer's ``deadlock_timeout`` runs out, so the writer never sees a deadlock:
    :func:`check_lock_timeout` keeps ``lock_timeout`` below ``deadlock_timeout``.
    """

    if switched(scope) and not is_online(scope):
        return StepResult(message="already switched to the compatibility views", details={"online": True})
    if ctx.options.drop_legacy:
        raise MigrationError(
            f"{scope} is migrated online: its legacy tables are archived (rollback needs them), not dropped; "
            "run cutover without --drop-legacy"
        )
    check_lock_timeout(ctx.options.lock_timeout_ms)
    copies = scope_copies(ctx, scope)
    merge = scope_merge(ctx, scope)
    tenant_id = tenant_id_from_schema(scope) if scope != ctx.config.legacy_auth_schema else None
    blocked: dict[str, float] = {}
    fingerprints: dict[str, str] = {}  # what rollback compares with: a write since cutover keeps it from undoing
    sequences: dict[str, dict[str, int | None]] = {}

    # Before any lock, while writes go on: the backlog applied and both sides compared in full, in one
    # snapshot (as phase 3 validates). Under the lock only the rows changed since are compared, and the
    # recorded target fingerprint is this one with those rows replaced: the fingerprint is a count and
    # a sum of row hashes, and every other row is unchanged on both sides while the capture triggers are
    # there (checked under the lock too).
    from migrator.phases.data import compare, continue_sequence_of  # data imports this module

    present_before = [t for t in tables if t in catalog.tables_by_schema([scope])[scope]]
    with db.snapshot():
        capture.apply_all_locked(scope, copies, merge)
        whole = {table: compare(copy) for table, copy in copies.items() if table in present_before}
        shape_before = _column_shapes(scope, present_before)
    differing = [
        f"{table}: legacy {c.source.rows} rows {c.source}, new {c.target.rows} rows {c.target}"
        for table, c in whole.items()
        if not c.matches
    ]
    if differing:
        raise MigrationError(
            f"{scope}: the new tables differ from the legacy ones: {'; '.join(differing)}; nothing was switched "
            "(run `migrate_phase data --validate-only` to see the differing keys)"
        )

    carried_objects: list[dict[str, str]] = []

    def switch() -> None:
        locked_at = time.monotonic()
        carried_objects.clear()  # a retried switch carries again
        # Every lock the switch needs, at once, before anything else (see the docstring): in name order.
        present = archive.lock_tables(scope, sorted(tables))
        blocked["since"] = locked_at
        problems = [f"{table}: its change capture trigger is gone" for table in capture.uncaptured(scope, present)]
        if set(present) != set(present_before):
            problems.append(f"legacy tables {sorted(present_before)} became {present} since the comparison")
        # DDL between the full comparison and the lock: the rows compared under the lock would not show it
        shape_now = _column_shapes(scope, present)
        problems += [
            f"{table}: its columns changed since the comparison (DDL during the cutover)"
            for table in present
            if table in shape_before and shape_now[table] != shape_before[table]
        ]
        changed = capture.pending_keys(scope)
        target_before = {
            table: fingerprint.fingerprints_of_keys(copies[table], keys)[1]
            for table, keys in changed.items()
            if table in copies and table in whole
        }
        stats = capture.apply_all_locked(scope, copies, merge)
        blocked["changes"] = stats.changes
        for table, copy in copies.items():
            if table not in present or table not in whole:
                continue
            target = whole[table].target
            if table in target_before:
                source_now, target_now = fingerprint.fingerprints_of_keys(copy, changed[table])
                if str(source_now) != str(target_now):
                    problems.append(
                        f"{table}: the {len(changed[table])} rows changed last differ (legacy {source_now}, new "
                        f"{target_now})"
                    )
                target = fingerprint.replaced(target, target_before[table], target_now)
            fingerprints[table] = str(target)
            # The legacy names become views over the new tables, drawing ids from their sequences: those
            # continue after every id the legacy sequences issued, under the lock that stops them.
            sequences[table] = continue_sequence_of(copy)
        if tenant_id is not None:
            problems += [
                f"{ref.legacy_table}: {n} rows without a shared id"
                for ref in REFERENCE_TABLES
                if (n := reference.unmapped_count(ref, [tenant_id]))
            ]
        if problems:
            raise MigrationError(
                f"{scope}: the new tables differ from the legacy ones after the last changes: {'; '.join(problems)}; "
                "nothing was switched (run `migrate_phase data --validate-only` to see the differing keys)"
            )
        found = dependents.of_tables(scope, present) if tenant_id is not None else []
        dependents.refuse_uncarried(scope, found, ctx.options.leave_dependents)
        capture.remove_capture(scope, present)
        dependents.detach_foreign_keys(found)
        moved = archive.archive_tables(scope, owner, present, ctx.config.archive_schema, drop=False)
        for table in present:
            archived = (ctx.config.archive_schema, moved[table].split(".", 1)[1])
            if table in copies:
                compat.create_data_view(copies[table], archived, tenant_id)
            elif tenant_id is not None:
                compat.create_reference_view(scope, legacy_table(table), tenant_id, archived)
        new_tables = {(scope, t): copies[t].target for t in copies}
        carried_objects.extend(
            dependents.carry(found, new_tables, ctx.options.leave_dependents, archive.archived_tables(moved, scope))
        )
        blocked["ms"] = (time.monotonic() - locked_at) * 1000

    compat.ensure_probe_schema()
    attempts = capture.with_lock_retries(switch, ctx.options.lock_timeout_ms, f"switch {scope} to the new tables")
    capture.drop_capture_schema_if_unused()
    return StepResult(
        message=f"switched online: {blocked.get('changes', 0)} last changes applied, writes blocked "
        f"{blocked.get('ms', 0):.0f} ms, {attempts} attempt(s); legacy names are compatibility views",
        details={
            "online": True,
            "writes_blocked_ms": round(blocked.get("ms", 0), 1),
            "attempts": attempts,
            "last_changes": blocked.get("changes", 0),
            "views": compat.compat_views(scope),
            "target_fingerprints": fingerprints,
            "sequences": sequences,
            "dependents_carried": carried_objects,
        },
    )


def remove_capture_of(scope: str) -> None:
    """Rollback before cutover: the scope's triggers and capture rows go (caller's transaction)."""
    capture.remove_capture(scope, list(capture.captured_tables(scope)))


def undo_switch(ctx: MigrationContext, scope: str, owner: str, recorded: dict[str, str]) -> list[str]:
    """Rollback after an online cutover: compatibility views dropped, archived legacy tables moved back.

    Only when the new tables still hold what cutover switched to: a write through the views (or
    the new names) since then exists in the new tables only, and undoing would lose it.
    """
    from migrator.phases.data import validation_fingerprints  # data imports this module

    copies = scope_copies(ctx, scope)
    changed = []
    for table, at_cutover in recorded.items():
        copy = copies[table]
        now = (
            validation_fingerprints(copy, fingerprint.method_of(at_cutover))[1]
            if catalog.table_exists(copy.target_schema, copy.target_table)
            else None
        )
        if str(now) != at_cutover:
            then_rows = at_cutover.split(":", 1)[0] if ":" in at_cutover else "?"
            changed.append(f"{copy.target_table} ({then_rows} rows at cutover, {now.rows if now else 0} now)")
    if changed:
        raise MigrationError(
            f"{scope} was written to since its online cutover: {', '.join(changed)}; undoing it would lose those "
            "writes: use `migrate_phase rollback --restore` (or keep the migration)"
        )
    views = compat.drop_views(scope)
    # What cutover carried to the new tables and exists once: foreign keys of other tables, views,
    # functions and statistics objects go back to the legacy tables with them (triggers, rules, policies,
    # grants and comments stayed on the legacy tables as well).
    back = dependents.of_tables(scope, [c.target_table for c in copies.values()])
    new_tables = {(scope, c.target_table) for c in copies.values()}
    back = [
        d
        for d in back
        if d.kind in dependents.REDEFINED - {FindingKind.RULE}
        or (d.kind == FindingKind.FOREIGN_KEY_FROM and tuple(d.parts[:2]) not in new_tables)
    ]
    dependents.detach_foreign_keys(back)
    archive.unarchive_tables(scope, owner, views, ctx.config.archive_schema)
    legacy_of = {c.target_table: table for table, c in copies.items()}
    back = [replace(d, table=legacy_of[d.table]) for d in back]  # as the dependents of the legacy tables
    dependents.carry(
        back,
        {(scope, table): sql.Identifier(scope, table) for table in copies},
        archived={(scope, table): copy.target for table, copy in copies.items()},
    )
    return views
