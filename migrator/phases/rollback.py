"""Rollback — before cutover: drop what the migration created, legacy untouched; or --restore the backup."""

from __future__ import annotations

from migrator.engine import tracking
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.errors import MigrationError
from migrator.core.steps import Step, StepResult
from migrator.models import Status
from migrator.core.phase import Phase, Progress
from migrator.phases.prepare import latest_backup
from migrator.ops import backup, restore
from migrator.devtools.reset import drop_service_roles
from salesflow.layout import SERVICE_SCHEMAS
from tenants.models import MigrationState, Tenant

UNDONE_BY_ROLLBACK = ("schemas", "data", "security", "verify")
UNDONE_BY_RESTORE = ("prepare", "schemas", "data", "security", "verify", "cutover")


class RollbackPhase(Phase):
    name = "rollback"
    number = None
    summary = "drop what the migration created (legacy untouched), or --restore the phase-1 backup"
    asks_confirmation = True
    # Every rollback is a new event: its steps run each time, never skipped as "already completed".
    always_rerun = True

    def plan(self, ctx: MigrationContext) -> list[Step]:
        if ctx.option("restore"):
            info = latest_backup()
            where = info.path if info else "(no backup recorded)"
            return [
                self.step("check_backup", f"Backup {where} exists and its sha256 matches the record", target=where),
                self.step("drop_roles", "Drop the service roles (roles are not part of a database dump)"),
                self.step("restore_backup", "Save the tracking history, replace the database with the backup "
                          "(pg_restore), put the history back", target=where, destructive=True),
                self.step("mark_rolled_back", "Mark the steps the restore undid as ROLLED_BACK"),
            ]
        self._refuse_after_cutover(ctx)
        steps = [self.step("drop_tenant_tables", f"Drop the namespaced tables in {t.schema}; legacy tables stay",
                           tenant_id=t.tenant_id, target=t.schema, destructive=True) for t in ctx.registered_tenants]
        if not ctx.tenant_filter:
            steps += [
                self.step("drop_service_schemas", f"Drop schemas {', '.join(SERVICE_SCHEMAS)} and the reference map",
                          destructive=True),
                self.step("drop_roles", "Drop the service roles"),
            ]
        steps.append(self.step("mark_rolled_back", "Mark the undone steps of phases 2-5 as ROLLED_BACK"))
        return steps

    def confirmation_question(self, ctx: MigrationContext, steps: list[Step]) -> str:
        if any(step.kind == "restore_backup" for step in steps):
            return "Restore REPLACES this whole database with the phase-1 backup. Continue?"
        return "Rollback drops the migrated tables, service schemas and roles; legacy data stays. Continue?"

    def apply(self, ctx: MigrationContext, step: Step, progress: Progress, record_id: int) -> StepResult:
        if step.kind == "check_backup":
            info = latest_backup()
            if info is None:
                raise MigrationError("no completed phase-1 backup is recorded; nothing to restore from")
            backup.check_backup(info)
            return StepResult(message=f"{info.path} verified (sha256 {info.sha256[:12]}...)", details={"backup": info.as_dict()})
        if step.kind == "restore_backup":
            info = latest_backup()
            if info is None:
                raise MigrationError("no completed phase-1 backup is recorded; nothing to restore from")
            cfg = ctx.config
            details = restore.restore_database(info, [*SERVICE_SCHEMAS, cfg.archive_schema, cfg.legacy_auth_schema],
                                               ctx.jobs, cfg.backup_dir)
            return StepResult(message=f"restored {info.path}; {details['history_rows']} tracking rows kept", details=details)
        if step.kind == "drop_roles":
            return StepResult(message=", ".join(drop_service_roles(ctx.config)) or "no roles to drop")
        if step.kind == "drop_tenant_tables":
            dropped = restore.drop_tenant_tables(TenantRef(step.tenant_id or "").schema)
            Tenant.objects.filter(tenant_id=step.tenant_id).update(migration_state=MigrationState.ROLLED_BACK)
            return StepResult(message=f"dropped {', '.join(dropped) or 'nothing'}", details={"dropped": dropped})
        if step.kind == "drop_service_schemas":
            return StepResult(message=f"dropped {', '.join(restore.drop_service_schemas()) or 'nothing'}")
        phases = UNDONE_BY_RESTORE if ctx.option("restore") else UNDONE_BY_ROLLBACK
        marked = tracking.mark_rolled_back(phases, [t.tenant_id for t in ctx.registered_tenants] if ctx.tenant_filter else None)
        return StepResult(message=f"{marked} steps marked ROLLED_BACK", details={"phases": list(phases)})

    def _refuse_after_cutover(self, ctx: MigrationContext) -> None:
        live = [r.tenant_id for r in tracking.latest_records("cutover").values()
                if r.step == "archive_legacy" and r.status == Status.COMPLETED]
        if live:
            raise MigrationError(
                f"cutover has run for tenant {live[0]} ({len(live)} in all): its legacy tables are archived; "
                "use `migrate_phase rollback --restore` to restore the phase-1 backup")

    def verify(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        from migrator import catalog

        if step.kind == "drop_service_schemas":
            return [f"schema {s} still exists" for s in SERVICE_SCHEMAS if catalog.schema_exists(s)]
        if step.kind == "drop_roles":
            return [f"role {r} still exists" for r in ctx.config.service_roles.values() if catalog.role_exists(r)]
        return []

