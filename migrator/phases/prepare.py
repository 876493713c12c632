"""Phase 1 — preparation: preflight, verified backup, legacy inspection, tenant registration."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from django.db import transaction

from migrator import catalog, db
from migrator.core.context import MigrationContext, TenantRef
from migrator.core.details import (
    BackupDetails,
    DiscoverDetails,
    InspectDetails,
    MigrationsAppliedDetails,
    PreflightDetails,
    read_details,
)
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.django_migrations import BOOTSTRAP_APPS, migrate_schema
from migrator.models import Disposition, FindingKind
from migrator.ops import backup, binaries, dependents, drift, inspection, registry, rehearsal, restore
from migrator.ops.drift_decisions import drift_decisions, drift_findings, record_findings, rename_decided_tables
from migrator.ops.tenant_decisions import (
    created_new,
    excluded_tenants,
    register_excluded,
    resolve_invalid_schemas,
)
from migrator.step_ref import StepRef
from migrator.tables import LEGACY_AUTH_TABLES
from salesflow.layout import tenant_schema_name
from tenants.models import MigrationState, Tenant

MIN_SERVER_VERSION = 150000
# Tenants inspected and registered together (the drift report's catalog queries are per batch).
REGISTER_PER_BATCH = 100


def catalog_database_comment() -> str:
    return str(
        db.fetchvalue(
            "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database "
            "WHERE datname = current_database()"
        )
    )


def server_major() -> int:
    return catalog.server_version_num() // 10000


class PreparePhase(Phase):
    name = "prepare"
    number = 1
    undone_by_restore = True
    estimate = "1 day"
    summary = "preflight, verified pg_dump backup, legacy layout inspected, tenants registered"
    tenant_state_on_success = MigrationState.REGISTERED
    # Read elsewhere: the backup a restore and a rehearsal use, the tenants registered and discovered.
    BACKUP = StepRef(name, "backup")
    REGISTER = StepRef(name, "register")
    DISCOVER = StepRef(name, "discover")

    def refuse_options(self, ctx: MigrationContext) -> None:
        # A first run on a database with nothing of the legacy layout: a DATABASE_URL naming the wrong
        # database. Refused before phase 1 writes its tables into that database's public schema.
        if catalog.tracking_table_exists():
            return
        if catalog.schema_exists(ctx.config.legacy_auth_schema) or catalog.schemas_like_tenants():
            return
        database = db.fetchvalue("SELECT current_database()")
        raise MigrationError(
            f"database {database} holds nothing of the legacy SalesFlow layout (no schema "
            f"{ctx.config.legacy_auth_schema}, no tenant_* schema): check DATABASE_URL (and "
            "SALESFLOW_LEGACY_AUTH_SCHEMA); nothing was changed"
        )

    def recover(self, ctx: MigrationContext) -> str | None:
        if restore.interrupted_restore(ctx.config.backup_dir) is not None:
            raise MigrationError(
                f"a restore of this database was interrupted ({restore.journal_path(ctx.config.backup_dir)}); "
                "rerun `migrate_phase rollback --restore` to finish it before anything else"
            )
        return None

    def plan(self, ctx: MigrationContext) -> list[Step]:
        cfg = ctx.config
        steps = [
            self.step(
                "preflight",
                "Server >= 15, pg_dump/pg_restore of its major version, backup folder writable with room for the dump",
            ),
            self.step(
                "bootstrap",
                "Tracking table and registry ready (Django migrations of " + ", ".join(BOOTSTRAP_APPS) + " in public)",
            ),
            self.step(
                self.BACKUP.kind,
                f"pg_dump --format=directory --jobs={max(1, ctx.jobs)} into {cfg.backup_dir}, "
                "checked with pg_restore --list, sha256 recorded",
            ),
            self.step(
                "inspect_auth",
                f"Inspect the legacy auth schema {cfg.legacy_auth_schema}",
                target=cfg.legacy_auth_schema,
            ),
            self.step(self.DISCOVER.kind, "Find tenant_* schemas; report names that are not valid tenant ids"),
        ]
        if ctx.options.skip_schemas or ctx.options.rename_schemas:  # a decision since: discover again
            steps[-1] = replace(steps[-1], rerun=True)
        taken_back = excluded_tenants(ctx.tenant_filter) if ctx.tenant_filter else set()
        for tenant in self._tenants(ctx):
            step = self.tenant_step(
                self.REGISTER.kind,
                f"Inspect {tenant.schema} and register tenant {tenant.tenant_id} in public.tenants",
                tenant,
            )
            # `prepare --tenant ID` of a tenant left out with --skip-schema takes it back.
            steps.append(replace(step, rerun=True) if tenant.tenant_id in taken_back else step)
        return steps

    def _tenants(self, ctx: MigrationContext) -> list[TenantRef]:
        valid, invalid = inspection.discover_tenant_schemas(ctx.config.legacy_auth_schema, ctx.config.archive_schema)
        new = created_new()
        valid = [t for t in valid if t not in new]
        decided = resolve_invalid_schemas(ctx, invalid, valid)
        # Left out now or by an earlier run (EXCLUDED); `--tenant ID` takes one back.
        left_out = (set(decided.skipped_tenants) | excluded_tenants()) - set(ctx.tenant_filter)
        valid = sorted([*(t for t in valid if t not in left_out), *decided.renamed.values()])
        if ctx.tenant_filter:
            skipped = [t for t in ctx.tenant_filter if t in decided.skipped_tenants]
            if skipped:
                raise MigrationError(f"tenant {skipped[0]!r} is given both --tenant and --skip-schema; choose one")
            missing = [t for t in ctx.tenant_filter if t not in valid]
            if missing:
                raise MigrationError(
                    f"unknown tenant {missing[0]!r}: there is no legacy schema tenant_{missing[0]} in this database"
                )
            return [TenantRef(t) for t in ctx.tenant_filter]
        return [TenantRef(t) for t in valid]

    def step_kinds(self) -> dict[str, StepKind]:
        return {
            "preflight": StepKind(self._preflight),
            "bootstrap": StepKind(self._bootstrap),
            self.BACKUP.kind: StepKind(self._take_backup, self._check_backup),
            "inspect_auth": StepKind(self._inspect_auth),
            self.DISCOVER.kind: StepKind(self._discover),
            self.REGISTER.kind: StepKind(
                self._register_tenant,
                self._check_registered,
                apply_batch=self._register_batch,
                batch_size=REGISTER_PER_BATCH,
            ),
        }

    def _preflight(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        version = catalog.server_version_num()
        if version < MIN_SERVER_VERSION:
            raise MigrationError(f"PostgreSQL {version // 10000} is too old: the migrator needs 15 or newer")
        major = version // 10000
        pg_dump = binaries.find_binary("pg_dump", major, ctx.config.bin_dirs)
        pg_restore = binaries.find_binary("pg_restore", major, ctx.config.bin_dirs)
        backup_dir = ctx.config.backup_dir
        try:
            backup_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MigrationError(
                f"backup folder {backup_dir} cannot be created: {exc.strerror}; "
                "set SALESFLOW_BACKUP_DIR to a writable folder"
            ) from None
        if not os.access(backup_dir, os.W_OK | os.X_OK):
            raise MigrationError(
                f"backup folder {backup_dir} is not writable; set SALESFLOW_BACKUP_DIR to a writable folder"
            )
        needed = catalog.database_size()  # a dump is never larger than the data it reads
        free = binaries.disk_free(backup_dir)
        if free < needed:
            raise MigrationError(
                f"not enough free disk for the backup in {backup_dir}: {free // 2**20} MiB free, "
                f"about {needed // 2**20} MiB needed; free space or set SALESFLOW_BACKUP_DIR"
            )
        return StepResult(
            message=f"PostgreSQL {major}, {pg_dump}, {free // 2**20} MiB free for ~{needed // 2**20} MiB",
            details=PreflightDetails(
                server_version=version,
                pg_dump=str(pg_dump),
                pg_restore=str(pg_restore),
                disk_free=free,
                database_size=needed,
            ),
        )

    def _bootstrap(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        adopted = registry.adopt_legacy_registry(ctx.config.archive_schema)
        applied = list(adopted["migrations_applied"]) if adopted else migrate_schema("public", BOOTSTRAP_APPS)
        message = f"{len(applied)} migrations applied" if applied else "already up to date"
        if adopted:
            message += (
                f"; adopted the legacy public.tenants ({adopted['rows']} tenants, kept as {adopted['kept_as']}, "
                f"extra columns: {', '.join(adopted['extra_columns']) or 'none'})"
            )
        return StepResult(message=message, details=MigrationsAppliedDetails(applied=applied, adopted_registry=adopted))

    def _take_backup(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        if ctx.options.rehearsal_backup:
            return self._record_rehearsal_backup(Path(ctx.options.rehearsal_backup))
        legacy, _invalid = inspection.discover_tenant_schemas(ctx.config.legacy_auth_schema, ctx.config.archive_schema)
        earlier = backup.latest_backup(self.BACKUP, ctx.config.backup_dir)
        if earlier is not None and not set(legacy) - created_new():
            # Likely a database a failed restore left empty: its backup would become "the latest".
            raise MigrationError(
                f"this database holds no legacy tenant schema but backup {earlier.path} exists; "
                "refusing to replace it with a backup of this database: restore it with "
                "`migrate_phase rollback --restore`"
            )
        major = server_major()
        pg_dump = binaries.find_binary("pg_dump", major, ctx.config.bin_dirs)
        pg_restore = binaries.find_binary("pg_restore", major, ctx.config.bin_dirs)
        info = backup.create_backup(
            pg_dump,
            pg_restore,
            ctx.config.backup_dir,
            ctx.jobs,
            major,
            max_part_tables=ctx.config.backup_part_tables,
            progress=lambda done, parts: reporter.progress(done, parts, "parts of the backup"),
            backup_step=self.BACKUP,
        )
        parts = f", {info.parts} parts" if info.parts > 1 else ""
        return StepResult(
            message=f"{info.path} ({info.size // 1024} KiB{parts}, {info.toc_entries} entries, "
            f"sha256 {info.sha256[:12]}...)",
            details=BackupDetails(
                backup=info.as_dict(),
                legacy_row_writes=backup.legacy_row_writes(ctx.config.legacy_auth_schema, ctx.config.archive_schema),
            ),
        )

    @staticmethod
    def _record_rehearsal_backup(dump: Path) -> StepResult:
        """A rehearsal copy was restored from ``dump``: that backup is its phase-1 backup (no second dump)."""
        comment = catalog_database_comment()
        if not comment.startswith(rehearsal.database_marker("")):
            raise MigrationError(
                "--rehearsal-backup is only for the scratch copy `migrate_phase rehearse` makes; run prepare without it"
            )
        try:
            info = backup.BackupInfo.from_dict(json.loads(backup.manifest_path(dump).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            raise MigrationError(
                f"backup {dump} has no readable manifest beside it; rerun `migrate_phase rehearse`"
            ) from None
        return StepResult(
            message=f"rehearsal copy restored from {info.path}",
            details=BackupDetails(backup=info.as_dict(), rehearsal_copy_of=comment),
        )

    def _inspect_auth(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        schema = ctx.config.legacy_auth_schema
        report = inspection.inspect_auth_schema(schema)
        # The objects that depend on the legacy auth tables are reported with the tenants' drift; cutover
        # carries none of them and refuses the auth tables while one is undecided (not this phase: the
        # tenants do not wait for that decision).
        decisions = drift_decisions(ctx)
        found = [drift.dependent_finding(d, decisions) for d in dependents.of_tables(schema, LEGACY_AUTH_TABLES)]
        record_findings({schema: found})
        message = inspection.describe_report(report)
        undecided = [f for f in found if f.blocks]
        if undecided:
            message += f"; {len(undecided)} dependent object(s) to decide before cutover (see the drift report)"
        return StepResult(
            message=message, details=InspectDetails(inspection=report, dependents=[f.as_dict() for f in found])
        )

    def _discover(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        valid, invalid = inspection.discover_tenant_schemas(ctx.config.legacy_auth_schema, ctx.config.archive_schema)
        created = created_new()
        new = [t for t in valid if t in created]
        valid = [t for t in valid if t not in new]
        decided = resolve_invalid_schemas(ctx, invalid, valid)
        if decided.blocking:
            # Migrating without them would leave their data behind while status says complete.
            listed = ", ".join(f"{name!r} ({rows} rows)" for name, rows in sorted(decided.blocking.items()))
            raise MigrationError(
                f"{len(decided.blocking)} tenant_* schemas hold data but their names are not valid tenant ids: "
                f"{listed}; "
                "pass --rename-schema NAME=NEW_ID to migrate one as tenant NEW_ID, or --skip-schema NAME to leave it "
                "out"
            )
        for tenant_id in decided.skipped_tenants:  # registered as EXCLUDED, their drift recorded as decided
            schema = tenant_schema_name(tenant_id)
            register_excluded(tenant_id)
            record_findings({schema: drift_findings(ctx, schema, schema)})
        message = f"{len(valid) + len(decided.renamed) - len(decided.skipped_tenants)} tenant schemas"
        if decided.skipped_tenants:
            message += f"; {len(decided.skipped_tenants)} tenants left out by --skip-schema"
        if new:
            message += f"; {len(new)} tenants created in the target layout left out"
        if decided.renamed:
            message += "; to rename: " + ", ".join(
                f"{old!r} -> tenant_{new_id}" for old, new_id in decided.renamed.items()
            )
        invalid_excluded = [e for e in decided.excluded if e["schema"] in invalid]
        if invalid:
            message += f"; skipped {len(invalid_excluded)} schemas whose names are not valid tenant ids: " + ", ".join(
                f"{entry['schema']!r} ({entry['rows']} rows, {entry['reason']})" for entry in invalid_excluded[:10]
            )
        return StepResult(
            message=message,
            details=DiscoverDetails(
                tenants=valid,
                invalid_schemas=invalid,
                created_new=new,
                excluded_schemas=decided.excluded,
                renamed_schemas=decided.renamed,
            ),
        )

    def _register_tenant(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        tenant = TenantRef(step.tenant_id or "")
        renamed_from = next((old for old, new in ctx.options.rename_schemas if new == tenant.tenant_id), None)
        inspected = tenant.schema
        if (
            renamed_from is not None
            and catalog.schema_exists(renamed_from)
            and not catalog.schema_exists(tenant.schema)
        ):
            inspected = renamed_from
        findings = drift_findings(ctx, inspected, tenant.schema)
        record_findings({tenant.schema: findings})  # kept whether or not the tenant is refused below
        blocking = [f for f in findings if f.blocks]
        if blocking:
            raise MigrationError(
                f"{tenant.schema} not registered: {len(blocking)} drift finding(s) refuse it or need a decision: "
                + "; ".join(f.line() for f in blocking)
            )
        # The renames and the registration commit together: a kill leaves either the old names and no
        # tenant, or the new names and the tenant (a rerun then only registers).
        with transaction.atomic():
            details: InspectDetails = {}
            if renamed_from is not None:
                details["renamed_from"] = renamed_from
                if inspected == renamed_from:
                    inspection.rename_schema(renamed_from, tenant.schema)
            result = self._register(ctx, tenant, findings, details)
        if renamed_from is not None:
            result.message = f"schema {renamed_from!r} renamed to {tenant.schema}; " + result.message
        return result

    def _register_batch(self, ctx: MigrationContext, steps: list[Step]) -> dict[str, StepResult]:
        """Many tenants' inspections in a few catalog queries (see :mod:`migrator.ops.drift`) and their
        registrations in one transaction. A tenant that is refused, or renamed from an invalid schema, is
        left to run on its own, which says why in one line."""
        renamed = {new for _old, new in ctx.options.rename_schemas}
        schemas = {step.key: TenantRef(step.tenant_id or "") for step in steps if step.tenant_id not in renamed}
        found = dict(drift.inspect_schemas([t.schema for t in schemas.values()], drift_decisions(ctx)))
        record_findings(found)
        results = {}
        with transaction.atomic():
            for key, tenant in schemas.items():
                if not any(f.blocks for f in found[tenant.schema]):
                    results[key] = self._register(ctx, tenant, found[tenant.schema], {})
        return results

    @staticmethod
    def _register(
        ctx: MigrationContext, tenant: TenantRef, findings: list[drift.Finding], details: InspectDetails
    ) -> StepResult:
        """Register a tenant whose drift is carried or decided: its decided table renames, its inspection,
        its registry row (in the caller's transaction)."""
        renamed_tables = rename_decided_tables(ctx, tenant.schema)
        if renamed_tables:
            details["renamed_tables"] = renamed_tables
        report = inspection.inspect_tenant_schema(tenant.schema)
        if not Tenant.objects.filter(tenant_id=tenant.tenant_id).exists():
            registered = Tenant(
                tenant_id=tenant.tenant_id,
                name=tenant.tenant_id.replace("_", " ").title(),
                migration_state=MigrationState.REGISTERED,
            )
            registered.auto_create_schema = False  # the legacy schema exists; phase 2 adds the target tables
            registered.save()
        rows = sum(info["rows"] for info in report["tables"].values())
        message = inspection.describe_report(report)
        drifted = [f for f in findings if f.kind != FindingKind.MISSING_TABLE or f.disposition != Disposition.CARRIED]
        if drifted:
            message += f"; drift: {len(drifted)} finding(s), carried or decided"
        details["drift"] = [f.as_dict() for f in findings]
        return StepResult(message=message, rows_expected=rows, details=InspectDetails(inspection=report, **details))

    def _check_backup(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        recorded = read_details(BackupDetails, result.details)
        info = backup.BackupInfo.from_dict(recorded["backup"])
        if info.toc_entries == 0 or not Path(info.path).is_dir():
            return [f"backup {info.path} is empty or missing"]
        if "rehearsal_copy_of" in recorded:
            return []  # the rehearsal checked its sha256 before restoring it
        backup.check_backup(info)
        return []

    def _check_registered(self, ctx: MigrationContext, step: Step, result: StepResult) -> list[str]:
        if not Tenant.objects.filter(tenant_id=step.tenant_id).exists():
            return [f"tenant {step.tenant_id} is not in public.tenants"]
        return []
