"""``rehearse``: the migration run on a restored copy of the phase-1 backup, with a projection of the real run.

Not part of `all`. The real database gets one tracking record (this phase's ``rehearsal`` step)
holding the report; everything else happens in a scratch database on the same server, which is
dropped at the end (``--keep`` keeps it; the next rehearsal drops a kept or killed one).

The scratch run is ``manage.py migrate_phase all`` in a child process with ``DATABASE_URL``
pointing at the copy, so it is the very code path of the real run; it reports each phase on a line
of its own as the phase ends (``--format jsonl``). Its prepare
does not dump the copy again: the copy's tracking table stops where the real backup started, so
prepare runs with ``--rehearsal-backup`` and records the backup the copy was restored from
(accepted only in a database marked as a rehearsal copy), then registers the tenants.
"""

from __future__ import annotations

from dataclasses import replace

from django.db import connection

from migrator import db
from migrator.core.command_options import arguments_of
from migrator.core.context import MigrationContext
from migrator.core.details import BackupDetails, RehearseDetails, read_details
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase, StepKind
from migrator.core.steps import Step, StepReporter, StepResult
from migrator.models import MigrationRecord
from migrator.ops import backup, rehearsal, restore
from migrator.ops.backup import BackupInfo
from migrator.ops.rehearsal_report import LegacyVolume, PhaseRun, RehearsalReport, RunSettings
from migrator.step_ref import StepRef


def rehearsed_phases() -> list[rehearsal.PhaseToRun]:
    """The phases the scratch run goes through: those `all` runs, in order, as the registry has them.
    prepare only registers the tenants there: with --rehearsal-backup it records the backup the copy
    was restored from instead of taking a new dump."""
    from migrator.phases import ORDERED  # a registry lookup: the registry imports this module

    return [rehearsal.PhaseToRun(phase.name, phase().scales_with_rows) for phase in ORDERED]


# The backup the scratch database is restored from: phase 1's.
BACKUP = StepRef("prepare", "backup")
# The options of this run the scratch run is given: the drift decisions, the time zone, the backup,
# the choices of data, verify and cutover (the others are about the rehearsal itself or the real run).
PASSED_ON = (
    "skip_schemas",
    "rename_schemas",
    "rename_tables",
    "leave_tables",
    "leave_constraints",
    "leave_dependents",
    "legacy_timezone",
    "rehearsal_backup",
    "reference_conflicts",
    "load_clients",
    "load_seconds",
    "load_max_regression",
    "load_queries",
    "drop_legacy",
)


class RehearsePhase(Phase):
    name = "rehearse"
    # Its record holds the report (the dashboard shows the newest).
    REHEARSAL = StepRef(name, "rehearsal")
    number = None
    always_rerun = True  # every rehearsal is a new record
    changes_schemas = False  # rows only: deploys may run meanwhile (tenants/schema_lock.py)
    summary = (
        "phases 1-6 on a scratch copy restored from the phase-1 backup; per-phase report and the real "
        "run's projected duration"
    )

    def plan(self, ctx: MigrationContext) -> list[Step]:
        target = ctx.options.target_database or rehearsal.default_target(connection.settings_dict["NAME"])
        return [
            self.step(
                self.REHEARSAL.kind,
                f"Restore the phase-1 backup into {target}, run phases "
                f"{', '.join(p.name for p in rehearsed_phases())} there, report and project the real run; "
                + ("keep the copy" if ctx.options.keep_target else "drop the copy"),
                target=target,
            )
        ]

    def step_kinds(self) -> dict[str, StepKind]:
        return {self.REHEARSAL.kind: StepKind(self._rehearse)}

    @staticmethod
    def _backup() -> BackupInfo:
        record = MigrationRecord.objects.latest_backup(BACKUP)
        details = read_details(BackupDetails, record.details if record else None)
        if not isinstance(details.get("backup"), dict):
            raise MigrationError(
                "there is no completed phase-1 backup to rehearse from; run `migrate_phase prepare` first"
            )
        return BackupInfo.from_dict(details["backup"])

    @staticmethod
    def _arguments(ctx: MigrationContext, info: BackupInfo) -> list[str]:
        """The scratch run gets this run's options (each phase reads its own), among them the drift
        decisions: the copy's phase 1 inspects the tenants again and refuses those whose findings no
        option decides, as the real phase 1 does."""
        arguments = ["--jobs", str(ctx.jobs), "--batch-size", str(ctx.batch_size)]
        for tenant_id in ctx.tenant_filter:
            arguments += ["--tenant", tenant_id]
        options = replace(ctx.options, rehearsal_backup=str(info.path))
        return [*arguments, *arguments_of(options, PASSED_ON)]

    def _rehearse(self, ctx: MigrationContext, step: Step, reporter: StepReporter) -> StepResult:
        info = self._backup()
        phases = rehearsed_phases()
        source = connection.settings_dict["NAME"]
        target = step.target.name
        rehearsal.check_target_name(target, source)
        backup.check_backup(info)
        pg_restore = restore.restore_tool(info, ctx.config.bin_dirs)
        with rehearsal.server_connection() as conn:
            live = rehearsal.legacy_volume(conn)
            cleaned = rehearsal.clean_up_leftovers(conn, ctx.config)
            rehearsal.create_scratch(conn, ctx.config, target, ctx.options.replace_target)
            try:
                rehearsal.restore_into(info, pg_restore, target, ctx.jobs)
                with db.connect_like_django("salesflow-migrator-rehearsal", dbname=target) as scratch:
                    rehearsed = rehearsal.legacy_volume(scratch)
                runs = rehearsal.run_phases(
                    phases, self._arguments(ctx, info), rehearsal.child_env(ctx.config, target), reporter.progress
                )
            finally:
                dropped_roles = rehearsal.finish(conn, ctx.config, target, ctx.options.keep_target)
        notes = []
        if not live.tenants:  # after the real cutover the legacy tables are archived: nothing live to count
            live = rehearsed
            notes.append("the live database has no legacy tenant tables; projected at the backup's volume")
        report = self._report(ctx, info, target, phases, runs, rehearsed, live, cleaned, dropped_roles, notes)
        return StepResult(
            message=self._message(report),
            rows_expected=rehearsed.rows,
            rows_copied=sum(r.rows_moved for r in runs),
            details=RehearseDetails(rehearsal=report.to_json()),
        )

    @staticmethod
    def _report(
        ctx: MigrationContext,
        info: BackupInfo,
        target: str,
        phases: list[rehearsal.PhaseToRun],
        runs: list[PhaseRun],
        rehearsed: LegacyVolume,
        live: LegacyVolume,
        cleaned: list[str],
        dropped_roles: list[str],
        notes: list[str],
    ) -> RehearsalReport:
        ran = [r.phase for r in runs]
        return RehearsalReport(
            ok=len(runs) == len(phases) and all(r.ok for r in runs),
            source_database=connection.settings_dict["NAME"],
            target_database=target,
            kept=ctx.options.keep_target,
            backup_path=info.path,
            backup_created_at=info.created_at,
            options=RunSettings(jobs=ctx.jobs, batch_size=ctx.batch_size, tenants=list(ctx.tenant_filter)),
            phases=runs,
            not_run=[p.name for p in phases if p.name not in ran],
            seconds=round(sum(r.seconds for r in runs), 3),
            rehearsed_volume=rehearsed,
            live_volume=live,
            projection=rehearsal.project(phases, runs, rehearsed, live),
            cleaned_up_before=cleaned,
            roles_dropped=dropped_roles,
            notes=notes,
        )

    @staticmethod
    def _message(report: RehearsalReport) -> str:
        projection = report.projection
        window = (
            f"real run projected at {rehearsal.seconds_text(projection.total_low_seconds)} to "
            f"{rehearsal.seconds_text(projection.total_high_seconds)}"
        )
        failed = report.first_failed
        if failed is None:
            return f"all {len(report.phases)} phases passed in {rehearsal.seconds_text(report.seconds)}; {window}"
        first = failed.first_failure
        return f"phase {failed.phase} failed in the rehearsal: {first.step}: {first.error}; {window} (partial)"
