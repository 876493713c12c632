"""``manage.py migrate_phase <phase>``: run one phase of the SalesFlow schema migration (or all, or status)."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from migrator import phases as phase_registry
from migrator.config import get_config
from migrator.core.command_options import (
    MAX_BATCH_SIZE,
    arguments_of,
    batch_size,
    option_fields,
    options_from_arguments,
    positive,
)
from migrator.core.context import MigrationContext, RunOptions, validate_tenant_ids
from migrator.core.details import RehearseDetails, read_details
from migrator.core.errors import MigrationError
from migrator.core.phase import Phase
from migrator.engine import orchestration
from migrator.engine.runner import PhaseOutcome
from migrator.management.arguments import add_options
from migrator.management.output import ConsoleReporter, outcome_dict, outcome_summary, rehearsal_lines
from migrator.ops.drift_decisions import drift_report
from migrator.ops.rehearsal_report import RehearsalReport
from migrator.phases import get_phase, phase_choices, phases_help
from migrator.phases.prepare import PreparePhase
from migrator.phases.rehearse import RehearsePhase
from migrator.reports import gate
from migrator.reports.drift import recorded_drift, report_lines
from migrator.reports.status import GLOBAL, StatusReport, failure_label, failure_reason, status_report


@contextmanager
def stop_on_signals(stop: threading.Event, on_stop: Callable[[], None] = lambda: None) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` instead of killing the run: the steps running finish, no other
    starts (``sync --follow`` ends its loop). A second one kills as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum: int, frame: object) -> None:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        on_stop()

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rerun_command(phase: str, ctx: MigrationContext) -> str:
    """The command that resumes this run: the phase with the options the run was given (``--online``
    above all: an offline rerun of an online run is another migration) and its tenants."""
    shown = tuple(field.name for field in option_fields(RunOptions) if not field.option.hidden)
    words = ["migrate_phase", phase, *arguments_of(ctx.options, shown)]
    for tenant_id in ctx.tenant_filter or ():
        words += ["--tenant", tenant_id]
    return " ".join(shlex.quote(word) for word in words)


COMMAND_HELP = (
    "Run a phase of the SalesFlow schema migration. {phases} Completed steps are skipped, so rerunning a phase "
    "resumes it."
)


class Command(BaseCommand):
    help = COMMAND_HELP.format(phases=phases_help())
    requires_system_checks = []

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # The phases the registry holds now, not when this module was imported.
        self.help = COMMAND_HELP.format(phases=phases_help())
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("phase", help="Phase number or name: " + ", ".join(phase_choices()) + ".")
        parser.add_argument(
            "--tenant",
            action="append",
            default=[],
            metavar="ID",
            help="Only this tenant (id without the tenant_ prefix); repeatable. Default: all.",
        )
        parser.add_argument(
            "--plan", action="store_true", help="Print the steps that would run and their SQL; change nothing."
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit 1 if the phase has steps left to run (with status: unless everything is complete).",
        )
        parser.add_argument(
            "--deploy-check",
            action="store_true",
            help="With status: exit 0 if migrate_schemas (a deploy) may run now, else 1 with one line saying why.",
        )
        parser.add_argument(
            "--jobs",
            type=positive,
            default=1,
            help="Tenants processed in parallel (default 1); lowered to what the server's free "
            "connections allow, with a note.",
        )
        parser.add_argument(
            "--batch-size",
            type=batch_size,
            default=50_000,
            help=f"Rows per copy batch, 1 to {MAX_BATCH_SIZE} (default 50000).",
        )
        parser.add_argument(
            "--format",
            choices=("text", "json", "jsonl"),
            default="text",
            help="Output format: text; json, one document at the end; jsonl, one line per phase as it ends "
            "(for a program that follows a long run).",
        )
        add_options(parser, RunOptions, get_config().option_defaults())

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._handle(options)
        except MigrationError as exc:
            raise CommandError(str(exc), returncode=1) from exc

    def _handle(self, options: dict[str, Any]) -> None:
        name = options["phase"]
        self.json = options["format"] in ("json", "jsonl")
        self.json_lines = options["format"] == "jsonl"
        self.verbosity = options["verbosity"]
        orchestration.check_database()
        if name == "status":
            if options["deploy_check"]:
                self._deploy_check()
            else:
                self._status(options["check"])
            return
        if name == "all":
            phases = [phase_class() for phase_class in phase_registry.ORDERED]
        else:
            try:
                phases = [get_phase(name)()]
            except KeyError:
                raise MigrationError(f"unknown phase {name!r}; choose one of: {', '.join(phase_choices())}") from None
        ctx = MigrationContext(
            config=get_config(),
            tenant_filter=validate_tenant_ids(options["tenant"]),
            batch_size=options["batch_size"],
            jobs=options["jobs"],
            options=options_from_arguments(
                RunOptions, options, render_sql=options["plan"] or options["verbosity"] >= 3
            ),
        )
        if options["plan"] or options["check"]:
            self._plan(phases, ctx, check=options["check"], show=options["plan"])
            return
        reporter = (lambda event: None) if self.json else ConsoleReporter(self.stdout, self.style, self.verbosity)
        try:
            with stop_on_signals(ctx.options.stop, self._stopping):
                outcomes = orchestration.run_phases(
                    phases, ctx, reporter, self._confirm(options["interactive"]), on_outcome=self._outcome_line
                )
        except KeyboardInterrupt:
            raise CommandError(
                f"interrupted: the running steps stopped where they were; rerun `{rerun_command(name, ctx)}` to resume",
                returncode=130,
            ) from None
        if name == RehearsePhase.name and outcomes and outcomes[0].ok:
            self._rehearsal_report(outcomes[0])
            return
        drift = recorded_drift() if any(o.phase == PreparePhase.name and o.planned for o in outcomes) else None
        if not self.json:
            if drift is not None and self.verbosity >= 1:
                self._write_drift(drift)
            if self.verbosity >= 1:
                for outcome in outcomes:
                    style = self.style.SUCCESS if outcome.ok else self.style.ERROR
                    self.stdout.write(style(outcome_summary(outcome)))
        elif not self.json_lines:  # jsonl: each phase had its line as it ended
            document: dict[str, object] = {
                "ok": all(o.ok for o in outcomes),
                "phases": [outcome_dict(o) for o in outcomes],
            }
            if drift is not None:
                document["drift"] = [group.as_dict() for group in drift]
            self.stdout.write(json.dumps(document, indent=2, default=str))
        failed = [(o.phase, step, error) for o in outcomes for step, error in o.failed]
        stopped_early = any(o.not_started for o in outcomes) or len(outcomes) < len(phases)
        if not failed and ctx.options.stop.is_set() and stopped_early:
            left = sum(o.not_started for o in outcomes)
            unstarted = [p.name for p in phases[len(outcomes) :]]
            parts = [f"{left} steps of phase {outcomes[-1].phase}"] if left else []
            parts += [f"phase {', '.join(unstarted)}"] if unstarted else []
            raise MigrationError(
                f"stopped on request: {' and '.join(parts)} not started; rerun `{rerun_command(name, ctx)}` to resume"
            )
        if failed:
            phase, step, error = failed[0]
            raise MigrationError(
                f"phase {phase} failed: {len(failed)} step(s) failed, first {step.label}: {error} "
                f"-- fix the cause and rerun `{rerun_command(phase, ctx)}` to resume"
            )

    def _stopping(self) -> None:
        """Said at once: a step waiting on a lock may take a while to end."""
        self.stderr.write("stopping: the running steps finish, no other starts (again to stop at once)")
        self.stderr.flush()

    def _write_drift(self, groups: list[Any]) -> None:
        for number, line in enumerate(report_lines(groups)):
            blocking = number > 0 and groups[number - 1].disposition in ("REFUSED", "DECISION")
            self.stdout.write(self.style.ERROR(line) if blocking else line)

    def _outcome_line(self, outcome: PhaseOutcome) -> None:
        if self.json_lines:
            self.stdout.write(json.dumps(outcome_dict(outcome), default=str))
            self.stdout.flush()

    def _rehearsal_report(self, outcome: Any) -> None:
        stored = read_details(RehearseDetails, next(iter(outcome.results.values())).details)["rehearsal"]
        report = RehearsalReport.from_json(stored)
        if self.json:
            self.stdout.write(json.dumps(stored, indent=None if self.json_lines else 2, default=str))
        else:
            for line in rehearsal_lines(report):
                self.stdout.write(line)
        if not report.ok:
            failed = next(p for p in report.phases if not p.ok)
            first = failed.first_failure
            raise MigrationError(
                f"the rehearsal failed in phase {failed.phase} ({first.step}: {first.error}); "
                "the real database is unchanged: fix the cause and rehearse again"
            )

    def _confirm(self, interactive: bool) -> Callable[[str, str], bool]:
        def ask(phase_name: str, question: str) -> bool:
            if not interactive:
                return True
            if not sys.stdin.isatty():
                raise MigrationError(f"phase {phase_name} needs confirmation: run it on a terminal or pass --noinput")
            answer = input(question + " [y/N] ")
            return answer.strip().lower() in ("y", "yes")

        return ask

    def _plan(self, phases: list[Phase], ctx: MigrationContext, check: bool, show: bool) -> None:
        planned = [orchestration.plan_phase(phase, ctx) for phase in phases]
        pending = sum(len(p.steps) for p in planned)
        drift = drift_report(ctx) if show and any(p.name == PreparePhase.name for p in phases) else None
        if self.json:
            self.stdout.write(
                json.dumps(
                    {
                        "pending": pending,
                        **({"drift": [group.as_dict() for group in drift]} if drift is not None else {}),
                        "phases": [
                            {
                                "phase": p.phase.name,
                                "steps": [
                                    {
                                        "migration_id": s.key,
                                        "description": s.description,
                                        "destructive": s.destructive,
                                        "sql": list(s.sql),
                                    }
                                    for s in p.steps
                                ],
                            }
                            for p in planned
                        ],
                    },
                    indent=2,
                )
            )
        elif show:
            for p in planned:
                self.stdout.write(
                    self.style.MIGRATE_HEADING(
                        f"Phase {p.phase.number or '-'} {p.phase.name}: {len(p.steps)} steps to run"
                    )
                )
                for step in p.steps:
                    marker = " (destructive)" if step.destructive else ""
                    self.stdout.write(f"  {step.label}{marker}: {step.description}")
                    for statement in step.sql:
                        self.stdout.write(f"      {statement}")
            if drift is not None:
                self._write_drift(drift)
        if check:
            if pending:
                if not self.json:
                    self.stdout.write(f"{pending} steps pending")
                sys.exit(1)
            if not self.json:
                self.stdout.write(self.style.SUCCESS("Nothing to do."))

    def _deploy_check(self) -> None:
        report = None if not orchestration.tracking_ready() else status_report()
        verdict = gate.deploy_verdict(report)
        if self.json:
            self.stdout.write(json.dumps({"safe": verdict.safe, "reason": verdict.reason}))
        else:
            self.stdout.write(verdict.reason)
        if not verdict.safe:
            sys.exit(1)

    def _status(self, check: bool) -> None:
        report = None if not orchestration.tracking_ready() else status_report()
        if report is None:
            if self.json:
                document = {"complete": False, "phases": [], "tenants": {}, "failed": [], **gate.gate_document(None)}
                self.stdout.write(json.dumps(document))
            else:
                self.stdout.write("Nothing recorded yet: run `migrate_phase prepare` first.")
            if check:
                sys.exit(1)
            return
        if self.json:
            self.stdout.write(json.dumps({**report.as_dict(), **gate.gate_document(report)}, indent=2))
        else:
            self._print_status(report)
        if check and not report.complete:
            sys.exit(1)

    def _print_status(self, report: StatusReport) -> None:
        width = max([len("tenant"), *(len(s) for s in report.scopes)])
        header = "tenant".ljust(width) + "  " + "  ".join(p.ljust(9) for p in report.phases)
        self.stdout.write(self.style.MIGRATE_HEADING(header))
        colour = {"done": self.style.SUCCESS, "failed": self.style.ERROR, "running": self.style.WARNING}
        for scope in report.scopes:
            cells = "  ".join(
                colour.get(report.cells[(p, scope)], str)(report.cells[(p, scope)].ljust(9)) for p in report.phases
            )
            label = "(all)" if scope == GLOBAL else scope
            self.stdout.write(f"{label.ljust(width)}  {cells}")
        for record in report.failures:
            line = f"{failure_label(record)} {record.migration_id} (attempt {record.attempt}): {failure_reason(record)}"
            self.stdout.write(self.style.ERROR(line))
        for entry in report.excluded:
            rows = "its rows" if entry["rows"] is None else f"{entry['rows']} rows"
            self.stdout.write(
                self.style.WARNING(f"EXCLUDED {entry['schema']!r}: {rows} not migrated ({entry['reason']})")
            )
        for schema in report.missing_schemas:
            self.stdout.write(self.style.ERROR(f"MISSING {schema}: registered tenant whose schema does not exist"))
        for schema in report.unregistered:
            self.stdout.write(
                self.style.ERROR(
                    f"UNREGISTERED {schema}: legacy tenant tables created since phase 1, not migrated: "
                    f"run `migrate_phase prepare` to register it, then the phases again"
                )
            )
        for schema in report.new_with_legacy:
            self.stdout.write(
                self.style.ERROR(
                    f"NOT MIGRATED {schema}: registered as a tenant created in the target layout (NEW), yet it "
                    "holds legacy tables, whose rows no phase migrates: move them into its new tables, or drop "
                    "them if nobody needs them"
                )
            )
        for schema, reason in report.deploy_failures.items():
            self.stdout.write(self.style.ERROR(f"DEPLOY FAILED {schema}: the last migrate_schemas: {reason}"))
        for schema in report.behind:
            self.stdout.write(
                self.style.ERROR(
                    f"BEHIND {schema}: lacks migrations of this release (a deploy stopped half way?): "
                    "run migrate_schemas"
                )
            )
        for ranged in report.ranged:
            self.stdout.write(
                f"RANGES {ranged.tenant_id} {ranged.table} {ranged.what}: {ranged.ranges_done}/{len(ranged.ranges)} "
                f"ranges done, {ranged.rows_done:,}/{ranged.rows_planned:,} rows (done/planned)"
            )
            for part in ranged.ranges:
                self.stdout.write(
                    f"  range {part.index}/{len(ranged.ranges)}: {part.status.lower()}, "
                    f"{part.rows_done:,}/{part.rows_planned:,} rows"
                )
        for lag in report.lag:
            age = "-" if lag.oldest_seconds is None else f"{lag.oldest_seconds:.1f}s"
            self.stdout.write(f"LAG {lag.scope}: {lag.pending} captured changes not applied yet, oldest {age}")
        if report.synced:
            self.stdout.write(
                f"TWO-WAY {report.synced} schemas: legacy and new tables in two-way sync until `migrate_phase finalize`"
            )
        summary = "complete" if report.complete else "incomplete"
        self.stdout.write(f"Migration {summary}: {report.cells_done}/{report.cells_to_do} cells done")
        verdict = gate.deploy_verdict(report)
        self.stdout.write(f"State: {gate.migration_state(report)}; deploy gate: {verdict.reason}")
