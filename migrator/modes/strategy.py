"""How a scope is migrated: offline (the application stopped) or online (it keeps writing, docs/online.md).

A *scope* is the legacy auth schema or a tenant schema. Phases data, verify, cutover and rollback do
the same steps in both modes; where the modes differ they ask the scope's :class:`MigrationMode`,
chosen by :func:`mode_for` and nowhere else. :class:`MigrationMode` itself is the offline mode: nothing
writes the legacy tables while they are migrated, so it has nothing to capture, apply, sync or stop.
:class:`OnlineMode` does the online migration's work (``migrator/modes/online.py``). Within a tenant's
phase-3 steps, the ``reporter`` a hook gets carries the tenant schema's catalog read (``reporter.tenant``,
see :func:`migrator.catalog.read_for`), which the online mode's catalog questions are answered from.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from django.db import transaction

from migrator import db
from migrator.core.context import MigrationContext
from migrator.core.details import CopyDetails, OnlineApplyDetails, read_details
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.models import DeferredConstraint
from migrator.modes import online
from migrator.ops import capture, constraints, twoway
from migrator.ops.constraints import RebuildProgress, RunTasks
from migrator.ops.copies import compare
from migrator.ops.fingerprint import Comparison
from migrator.ops.table_copy import TableCopy


class MigrationMode:
    """The offline migration, and the questions phases ask of a scope's mode.

    Offline, nothing writes the legacy tables while the migration reads them: a copy is complete when
    its rows are, counts validated once still hold, and cutover archives the legacy tables under a lock.
    """

    name = "offline"
    # The application keeps writing the legacy tables (and, after the two-way sync starts, the new ones)
    # while they are migrated: row counts move, and reads that must agree share one snapshot.
    writes_go_on = False

    def __repr__(self) -> str:
        return f"<{self.name} mode>"

    # --- phase 3: data ---

    def refuse_options(self, ctx: MigrationContext) -> None:
        """Refuse the run's options before anything is planned or copied."""

    def scope_steps(self, phase: Phase, scope: str, tenant_id: str | None) -> list[Step]:
        """The phase's steps after the scope's copies and before its validation."""
        return []

    def start_sync(self, ctx: MigrationContext, scope: str, reporter: StepReporter) -> StepResult:
        """The step :meth:`scope_steps` planned (offline plans none)."""
        raise MigrationError(f"{scope} is migrated offline: there is no two-way sync to start")

    def before_copy(self, ctx: MigrationContext, scope: str, tables: list[str], reporter: StepReporter) -> None:
        """Before these legacy tables of the scope are read."""

    def after_copy(
        self, ctx: MigrationContext, scope: str, tables: list[str], reporter: StepReporter
    ) -> OnlineApplyDetails:
        """After the tables' rows are in the target: what else the copy did, for its record."""
        return {}

    def mark_copied(self, ctx: MigrationContext, scope: str, tables: list[str]) -> None:
        """The tables' rows are in the target (merged reference tables: nothing is applied here)."""

    def restore_before_apply(
        self, schema: str, table: str, advice: str, parallel: RunTasks | None, progress: RebuildProgress
    ) -> int:
        """Before :meth:`after_copy`, the new table's constraints it needs (how many were rebuilt)."""
        return 0

    def catch_up(
        self, ctx: MigrationContext, scope: str, applied: OnlineApplyDetails, reporter: StepReporter
    ) -> OnlineApplyDetails:
        """After the table's constraints are rebuilt: ``applied`` (from :meth:`after_copy`), brought up to date."""
        return applied

    def may_compare_in_ranges(self, copy: TableCopy) -> bool:
        """Whether phase 3 may compare a large table range by range, each range's both sides in one
        statement: whenever nothing writes them, or both sides are written together."""
        return True

    def compare(self, ctx: MigrationContext, copy: TableCopy) -> Comparison:
        """Phase 3's comparison of a whole table (and, on a difference, the differing keys)."""
        comparison = compare(copy)  # both fingerprints come from one statement, so from one snapshot
        if not comparison.matches:  # the keys too: both sides and the keys again, in one snapshot
            with db.snapshot():
                comparison = compare(copy)
        return comparison

    def expects_every_row(self, result: StepResult) -> bool:
        """Whether a copy's record must show every source row copied."""
        return True

    def maps_every_reference(self) -> bool:
        """Whether every legacy reference row has a shared id once the merge steps ran."""
        return True

    # --- phase 5: verify ---

    def consistent_reads(self) -> AbstractContextManager[None]:
        """Reads that must agree with each other (a count by name and the same count through the ORM)."""
        return nullcontext()

    # --- phase 6: cutover ---

    def cut_over(
        self, ctx: MigrationContext, scope: str, reporter: StepReporter, archive: Callable[[], StepResult]
    ) -> StepResult:
        """Make the new tables the scope's primary ones: offline, ``archive`` moves the legacy tables away."""
        return archive()

    def cut_over_problems(self, scope: str, legacy_left: Callable[[], list[str]]) -> list[str]:
        """What is wrong after :meth:`cut_over`: offline, a legacy table of ``legacy_left`` still there."""
        return [f"legacy table {scope}.{table} still present" for table in sorted(legacy_left())]

    # --- rollback ---

    def undo_steps(self, phase: Phase, scope: str, tenant_id: str | None) -> list[Step]:
        """Rollback's steps for the scope before its new tables are dropped."""
        return []

    def undo_refusals(self, ctx: MigrationContext, scope: str) -> list[str]:
        """What :meth:`undo` would lose (checked for every scope before any is undone)."""
        return []

    def undo(self, ctx: MigrationContext, scope: str) -> StepResult:
        """The step :meth:`undo_steps` planned (offline plans none)."""
        return StepResult(message=f"{scope} is migrated offline: nothing to stop")

    def refuse_drop(self, scope: str) -> None:
        """Before the scope's new tables are dropped."""

    def before_drop(self, scope: str) -> None:
        """In the transaction that drops the scope's new tables, before the drop."""


class OnlineMode(MigrationMode):
    """The online migration: capture, copy and apply, then two-way sync until finalize (docs/online.md)."""

    name = "online"
    writes_go_on = True

    def refuse_options(self, ctx: MigrationContext) -> None:
        # before anything is copied: its short locks must end before a deadlock check
        online.check_lock_timeout(ctx.options.lock_timeout_ms)

    def scope_steps(self, phase: Phase, scope: str, tenant_id: str | None) -> list[Step]:
        return [
            phase.step(
                "start_two_way_sync",
                f"Apply the last changes captured on {scope} and keep its legacy and new tables in two-way sync "
                "(short lock, --lock-timeout per attempt); both sides' sequences in one id space",
                tenant_id=tenant_id,
                target=scope,
            )
        ]

    def start_sync(self, ctx: MigrationContext, scope: str, reporter: StepReporter) -> StepResult:
        return online.start_two_way_sync(ctx, scope, reporter)

    def before_copy(self, ctx: MigrationContext, scope: str, tables: list[str], reporter: StepReporter) -> None:
        online.capture_before_copy(ctx, scope, tables, reporter)

    def after_copy(
        self, ctx: MigrationContext, scope: str, tables: list[str], reporter: StepReporter
    ) -> OnlineApplyDetails:
        return online.apply_after_copy(ctx, scope, tables, reporter)

    def mark_copied(self, ctx: MigrationContext, scope: str, tables: list[str]) -> None:
        online.mark_copied(ctx, scope, tables)

    def restore_before_apply(
        self, schema: str, table: str, advice: str, parallel: RunTasks | None, progress: RebuildProgress
    ) -> int:
        # What was written meanwhile is applied before the foreign keys are rebuilt (after the indexes:
        # the apply upserts by key), so a contact and its activity written in one transaction are both
        # there, or both gone.
        return constraints.restore_constraints(
            schema, table, advice=advice, kind=DeferredConstraint.Kind.INDEX, parallel=parallel, progress=progress
        )

    def catch_up(
        self, ctx: MigrationContext, scope: str, applied: OnlineApplyDetails, reporter: StepReporter
    ) -> OnlineApplyDetails:
        if applied:  # and what was written while the constraints were rebuilt
            applied["changes_applied"] = applied["changes_applied"] + online.sync_scope(ctx, scope, reporter).changes
        return applied

    def may_compare_in_ranges(self, copy: TableCopy) -> bool:
        # in two-way sync, each range's both sides are equal in any one statement; while only captured,
        # the new table lags behind the captured changes, applied in the whole table's snapshot
        return not online.is_captured_only(copy.source_schema)

    def compare(self, ctx: MigrationContext, copy: TableCopy) -> Comparison:
        if online.is_captured_only(copy.source_schema):  # writes go on: the captured changes applied in it too
            return online.compare_in_snapshot(ctx, copy)
        return super().compare(ctx, copy)  # in two-way sync, or `data --online` validating a scope not captured

    def expects_every_row(self, result: StepResult) -> bool:
        # writes go on: the captured changes carried them over
        return not read_details(CopyDetails, result.details).get("online")

    def maps_every_reference(self) -> bool:
        # rows added since are captured; each tenant's next apply merges them
        return False

    @contextmanager
    def _in_snapshot(self) -> Iterator[None]:
        with db.snapshot():
            yield

    def consistent_reads(self) -> AbstractContextManager[None]:
        # Written meanwhile (two-way sync carries the application's writes to the new tables at once).
        return self._in_snapshot()

    def cut_over(
        self, ctx: MigrationContext, scope: str, reporter: StepReporter, archive: Callable[[], StepResult]
    ) -> StepResult:
        # migrated with data --online: the legacy tables are archived by finalize
        if ctx.options.drop_legacy:
            raise MigrationError(
                f"{scope} is migrated online: its legacy tables stay in two-way sync until `migrate_phase finalize` "
                "archives them (rollback needs them until then); run cutover without --drop-legacy"
            )
        return online.declare_new_primary(ctx, scope, reporter)

    def cut_over_problems(self, scope: str, legacy_left: Callable[[], list[str]]) -> list[str]:
        return []  # the legacy tables stay in sync until finalize

    def undo_steps(self, phase: Phase, scope: str, tenant_id: str | None) -> list[Step]:
        if not twoway.is_synced(scope):  # captured only: its capture goes with the new tables (before_drop)
            return []
        return [
            phase.step(
                "stop_two_way_sync",
                f"Stop the two-way sync of {scope} (short lock, --lock-timeout per attempt); its legacy tables "
                "hold every write, the legacy sequences continue past every id issued",
                tenant_id=tenant_id,
                target=scope,
                destructive=True,
            )
        ]

    def undo_refusals(self, ctx: MigrationContext, scope: str) -> list[str]:
        return online.rollback_refusals(ctx, [scope]) if twoway.is_synced(scope) else []

    def undo(self, ctx: MigrationContext, scope: str) -> StepResult:
        return online.stop_sync(ctx, scope)

    def refuse_drop(self, scope: str) -> None:
        # its legacy tables' sync triggers would write into the new side
        if twoway.is_synced(scope):
            raise MigrationError(
                f"{scope} is still in two-way sync (its stop_two_way_sync step did not complete); "
                "nothing was dropped: rerun `migrate_phase rollback`"
            )

    def before_drop(self, scope: str) -> None:
        online.remove_capture_of(scope)  # data --online: its triggers go, legacy tables untouched


OFFLINE = MigrationMode()
ONLINE = OnlineMode()


def mode_for(
    scope: str | None = None, *, migrating_online: bool = False, online_scopes: Collection[str] | None = None
) -> MigrationMode:
    """The one place a scope's mode is chosen.

    Online when this run migrates online (``migrating_online``: phase data's ``--online``), or when the
    scope is migrated online already (captured, or in two-way sync since an earlier ``data --online``):
    later phases follow the scope's state, whatever their options. Offline otherwise, and for a
    question about the whole run (no ``scope``) that ``--online`` does not change.
    ``online_scopes``: the scopes migrated online, when read once for several (asked here otherwise).
    """
    if migrating_online:
        return ONLINE
    if scope is None:
        return OFFLINE
    migrated_online = scope in online_scopes if online_scopes is not None else online.is_online(scope)
    return ONLINE if migrated_online else OFFLINE


def beside_synced_writers(work: Callable[[], None], lock_timeout_ms: int, what: str) -> None:
    """Run ``work`` in one transaction. While a scope is in two-way sync the application's writes to it
    use the shared reference tables too: a lock ``work`` takes on them waits at most ``lock_timeout_ms``
    and the transaction is retried (``capture.with_lock_retries``), so the writes queued behind it do not wait long."""
    if twoway.synced_scopes():
        capture.with_lock_retries(work, lock_timeout_ms, what)
    else:
        with transaction.atomic():
            work()


def remove_online_leftovers() -> None:
    """Once no scope needs them (rollback of everything): the capture schema, the shared reference
    tables' sync triggers and the sync schema go, whatever mode each scope was migrated in."""
    capture.drop_capture_schema_if_unused()
    online.finish_shared_sync()
