"""Rollback — before cutover: drop what the migration created, legacy untouched; or --restore the backup."""

from __future__ import annotations

from django.db import transaction

from migrator import catalog
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.details import (
    ArchiveDetails,
    CheckBackupDetails,
    DroppedDetails,
    DropRolesDetails,
    RolledBackDetails,
    read_details,
)
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.engine import tracking
from migrator.models import Status
from migrator.modes import MigrationMode, beside_synced_writers, mode_for, online_scopes, remove_online_leftovers
from migrator.ops import backup, grants, restore, teardown
from migrator.ops.backup import BackupInfo
from migrator.ops.tenant_decisions import created_new_schemas
from migrator.step_ref import StepRef
from migrator.tables import service_tables
from tenants.models import MigrationState, Tenant

# The record of the backup a restore uses: phase 1's.
BACKUP = StepRef("prepare", "backup")
# Phase 4's records of the roles it created and of the usage it granted on tenant schemas: what is undone.
SERVICE_ROLE = StepRef("security", "service_role")
TENANT_GRANTS = StepRef("security", "tenant_grants")
# The steps after which a tenant's (or the auth schema's) legacy tables left: only a restore goes back.
CUT_OVER = StepRef("cutover", "archive_legacy")
SYNC_FINISHED = StepRef("finalize", "finish_sync")


def undone_phases(restore: bool) -> list[str]:
    """The phases whose steps a rollback (or a restore) undoes, as each phase declares it: the numbered
    phases in their order, then the others (a restore undoes finalize too, which no plain rollback may)."""
    from migrator.phases import ORDERED, PHASES  # the registry imports this module

    phases = [*ORDERED, *(p for p in PHASES if p not in ORDERED)]
    return [p.name for p in phases if (p.undone_by_restore if restore else p.undone_by_rollback)]


def recorded_backup(ctx: MigrationContext) -> BackupInfo:
    """The tracked backup, or (tracking table gone or empty) the newest manifest in the backup folder."""
    info = backup.latest_backup(BACKUP, ctx.config.backup_dir)
    if info is None:
        raise MigrationError(
            f"no completed phase-1 backup is recorded and no backup manifest of this database is in "
            f"{ctx.config.backup_dir}; nothing to restore from (set SALESFLOW_BACKUP_DIR to the "
            "folder that holds the backup)"
        )
    return info


class RollbackPhase(Phase):
    name = "rollback"
    number = None
    alters_tables = True
    summary = "drop what the migration created (legacy untouched), or --restore the phase-1 backup"
    asks_confirmation = True
    # Every rollback is a new event: its steps run each time, never skipped as "already completed".
    always_rerun = True

    def recover(self, ctx: MigrationContext) -> str | None:
        if not ctx.options.restore:
            return None
        return restore.recover_interrupted_restore(ctx.config.backup_dir)

    def refuse_options(self, ctx: MigrationContext) -> None:
        if ctx.options.restore and (ctx.tenant_filter or ctx.options.skip_schemas):
            raise MigrationError(
                "--restore brings the whole database back to phase 1's backup (every tenant, every write since): "
                "it takes no --tenant or --skip-schema; for one tenant before its cutover run "
                "`migrate_phase rollback --tenant ID` without --restore"
            )
        grants.refuse_another_role_prefix(ctx.config, SERVICE_ROLE)

    # the steps only --restore plans
    RESTORE_KINDS = ("check_backup", "restore_backup")

    def plan(self, ctx: MigrationContext) -> list[Step]:
        if ctx.options.restore:
            info = backup.latest_backup(BACKUP, ctx.config.backup_dir)
            where = info.path if info else "(no backup recorded)"
            return [
                self.step("check_backup", f"Backup {where} exists and its sha256 matches the record", target=where),
                self.step(
                    "drop_roles",
                    "Revoke the service roles' grants; drop the roles the migration created "
                    "(roles are not part of a database dump)",
                ),
                self.step(
                    "restore_backup",
                    "Save the tracking history, restore the backup into a new database (pg_restore), "
                    "write the history into it, then swap it in under this database's name",
                    target=where,
                    destructive=True,
                ),
                self.step("mark_rolled_back", "Mark the steps the restore undid as ROLLED_BACK"),
            ]
        self._refuse_after_cutover(ctx)
        if not ctx.tenant_filter:
            self._refuse_new_tenants()
        steps = self._undo_steps(ctx)
        steps += [
            self.step(
                "drop_tenant_tables",
                f"Drop the namespaced tables in {t.schema}; legacy tables stay",
                tenant_id=t.tenant_id,
                target=t.schema,
                destructive=True,
            )
            for t in ctx.registered_tenants
        ]
        if not ctx.tenant_filter:
            steps += [
                self.step(
                    "drop_service_schemas",
                    f"Drop schemas {', '.join(service_tables())} and the reference map",
                    destructive=True,
                ),
                self.step("drop_roles", "Revoke the service roles' grants; drop the roles the migration created"),
            ]
        steps.append(self.step("mark_rolled_back", "Mark the undone steps of phases 2-5 as ROLLED_BACK"))
        return steps

    def confirmation_question(self, ctx: MigrationContext, steps: list[Step]) -> str:
        if any(step.kind == "restore_backup" for step in steps):
            return (
                f"Restore REPLACES this whole database with the phase-1 backup: {self._writes_discarded(ctx)} Continue?"
            )
        return "Rollback drops the migrated tables, service schemas and roles; legacy data stays. Continue?"

    @staticmethod
    def _writes_discarded(ctx: MigrationContext) -> str:
        then = backup.recorded_legacy_row_writes(BACKUP)
        if then is None:
            return "every write since the backup is discarded (how many was not recorded)."
        now = backup.legacy_row_writes(ctx.config.legacy_auth_schema, ctx.config.archive_schema)
        return (
            f"{max(now - then, 0)} row writes to the legacy tables since the backup (inserts, updates, deletes, by "
            "the server's statistics; more if they were reset) and every write to the new tables are discarded."
        )

    def step_kinds(self) -> dict[str, StepKind]:
        return {
            # checks: run again they change nothing, and a failed one left the database as it was
            "check_backup": StepKind(self._check_backup, rerunnable=True),
            "restore_backup": StepKind(self._restore_backup),
            "drop_roles": StepKind(self._drop_roles, self._check_roles_gone),
            "drop_tenant_tables": StepKind(self._drop_tenant_tables),
            "drop_service_schemas": StepKind(self._drop_service_schemas, self._check_service_schemas_gone),
            "mark_rolled_back": StepKind(self._mark_rolled_back),
            "check_online_rollback": StepKind(self._check_online_rollback, rerunnable=True),
            "stop_two_way_sync": StepKind(self._stop_two_way_sync),
        }

    # --- what each scope's mode undoes before its new tables go (docs/online.md) ---

    @staticmethod
    def _scope_modes(ctx: MigrationContext) -> list[tuple[str, str | None, MigrationMode]]:
        """(schema, tenant id, mode) of the scopes this rollback undoes, the auth schema first."""
        scopes: list[tuple[str, str | None]] = [(t.schema, t.tenant_id) for t in ctx.registered_tenants]
        if not ctx.tenant_filter:
            scopes.insert(0, (ctx.config.legacy_auth_schema, None))
        online = online_scopes()  # read once: thousands of tenants
        return [(scope, tenant_id, mode_for(scope, online_scopes=online)) for scope, tenant_id in scopes]

    def _undo_steps(self, ctx: MigrationContext) -> list[Step]:
        """What the scopes' modes undo first (stopping a two-way sync: the legacy side holds every write): all
        checked, then each."""
        undo = [
            step
            for scope, tenant_id, mode in self._scope_modes(ctx)
            for step in mode.undo_steps(self, scope, tenant_id)
        ]
        if not undo:
            return []
        return [
            self.step(
                "check_online_rollback",
                f"Check that {len(undo)} schema(s) in two-way sync can go back to their legacy tables without losing "
                "a value (nothing changes if one cannot)",
            ),
            *undo,
        ]

    def _check_online_rollback(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        # Named here, not in the step's target: a record's target holds 200 characters, a few tenants' names.
        problems = [
            problem for scope, _tenant_id, mode in self._scope_modes(ctx) for problem in mode.undo_refusals(ctx, scope)
        ]
        if problems:
            raise MigrationError(
                f"rollback would discard values the legacy tables cannot hold: {'; '.join(problems[:5])}; "
                "nothing was rolled back: drop those columns first if their values may go, or keep the migration"
            )
        return StepResult(message="every value of the new tables has a place in the legacy tables")

    def _stop_two_way_sync(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        result = mode_for(step.target.name).undo(ctx, step.target.name)
        with transaction.atomic():
            # the cutover runs again after this (the auth step only runs in a rollback of everything)
            tracking.mark_rolled_back([CUT_OVER.phase], [step.tenant_id] if step.tenant_id else None)
        return result

    def _check_backup(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        info = recorded_backup(ctx)
        backup.check_backup(info)
        pg_restore = restore.restore_tool(info, ctx.config.bin_dirs)  # before drop_roles changes anything
        return StepResult(
            message=f"{info.path} verified (sha256 {info.sha256[:12]}...), {pg_restore}",
            details=CheckBackupDetails(backup=info.as_dict(), pg_restore=str(pg_restore)),
        )

    def _restore_backup(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        info = recorded_backup(ctx)
        details = restore.restore_database(
            info,
            ctx.jobs,
            ctx.config.backup_dir,
            ctx.config.bin_dirs,
            ctx.lock,
            progress=lambda done, items: reporter.progress(done, items, "items of the backup restored"),
        )
        return StepResult(
            message=f"restored {info.path}; {details['history_rows']} tracking rows and "
            f"{details['admin_account_rows']} rows of the admin site's accounts kept",
            details=details,
        )

    def _drop_roles(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        dropped, kept = teardown.drop_service_roles(ctx.config, SERVICE_ROLE, TENANT_GRANTS)
        message = f"dropped {', '.join(dropped) or 'no role'}" + (
            f"; kept {', '.join(kept)} (not created by the migrator; its grants revoked)" if kept else ""
        )
        return StepResult(message=message, details=DropRolesDetails(dropped=dropped, kept=kept))

    def _drop_tenant_tables(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        # The tenant's steps become ROLLED_BACK in the transaction that drops its tables: a rollback
        # that stops after this tenant (killed, or a later step failing) never leaves them "done".
        tenant = TenantRef(step.tenant_id or "")
        mode = mode_for(tenant.schema)
        mode.refuse_drop(tenant.schema)
        dropped: list[str] = []
        marked = 0

        def drop() -> None:
            nonlocal dropped, marked
            mode.before_drop(tenant.schema)
            # phase 4's record of the tenant's usage grants is read before the drop marks it
            teardown.revoke_tenant_usage(tenant.schema, TENANT_GRANTS)
            dropped = teardown.drop_tenant_tables(tenant.schema, tenant.tenant_id)
            Tenant.objects.filter(tenant_id=step.tenant_id).update(migration_state=MigrationState.ROLLED_BACK)
            marked = tracking.mark_rolled_back(undone_phases(restore=False), [step.tenant_id or ""], kept=[BACKUP])

        # Dropping the new tables locks the shared reference tables their foreign keys point at.
        beside_synced_writers(drop, ctx.options.lock_timeout_ms, f"drop the new tables of {tenant.schema}")
        return StepResult(
            message=f"dropped {', '.join(dropped) or 'nothing'}; {marked} steps marked ROLLED_BACK",
            details=DroppedDetails(dropped=dropped),
        )

    def _drop_service_schemas(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        # Without the service schemas (and the reference map) no tenant's migrated data stands: every
        # undone step is marked with the drop, so a failing drop_roles after it leaves nothing "done".
        auth = ctx.config.legacy_auth_schema
        with transaction.atomic():
            mode = mode_for(auth)
            mode.refuse_drop(auth)
            mode.before_drop(auth)
            remove_online_leftovers()
            dropped = teardown.drop_service_schemas()
            marked = tracking.mark_rolled_back(undone_phases(restore=False), kept=[BACKUP])
        return StepResult(message=f"dropped {', '.join(dropped) or 'nothing'}; {marked} steps marked ROLLED_BACK")

    def _mark_rolled_back(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        phases = undone_phases(ctx.options.restore)
        marked = tracking.mark_rolled_back(
            phases, [t.tenant_id for t in ctx.registered_tenants] if ctx.tenant_filter else None, kept=[BACKUP]
        )
        return StepResult(message=f"{marked} steps marked ROLLED_BACK", details=RolledBackDetails(phases=phases))

    def _refuse_after_cutover(self, ctx: MigrationContext) -> None:
        live = [
            r.tenant_id
            for r in tracking.latest_records(CUT_OVER.phase).values()
            if r.step == CUT_OVER.kind
            and r.status == Status.COMPLETED
            and not read_details(ArchiveDetails, r.details).get("online")
        ]
        live += [
            r.tenant_id
            for r in tracking.latest_records(SYNC_FINISHED.phase).values()
            if r.step == SYNC_FINISHED.kind and r.status == Status.COMPLETED and r.tenant_id
        ]
        if ctx.tenant_filter:  # one tenant's rollback touches no other tenant: another's cutover is no reason
            live = [t for t in live if t in ctx.tenant_filter]
        if live:
            raise MigrationError(
                f"cutover has run for tenant {live[0]} ({len(live)} in all): its legacy tables are archived; "
                "use `migrate_phase rollback --restore` to restore the phase-1 backup"
            )

    @staticmethod
    def _refuse_new_tenants() -> None:
        """Tenants the application created in the target layout have no legacy tables to go back to, and their
        tables' foreign keys point into the shared schemas a whole rollback drops (``CASCADE`` would take those
        foreign keys with it, silently)."""
        created = created_new_schemas()
        if created:
            shown = ", ".join(created[:3]) + (", ..." if len(created) > 3 else "")
            raise MigrationError(
                f"tenants created in the target layout ({shown}) use the shared tables this rollback drops and have "
                "no legacy tables to go back to; nothing was rolled back: roll back single tenants with "
                "`migrate_phase rollback --tenant ID`, or delete those tenants first"
            )

    def _check_service_schemas_gone(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        return [f"schema {s} still exists" for s in service_tables() if catalog.schema_exists(s)]

    def _check_roles_gone(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        dropped = read_details(DropRolesDetails, result.details).get("dropped", [])
        return [f"role {r} still exists" for r in dropped if catalog.role_exists(r)]
