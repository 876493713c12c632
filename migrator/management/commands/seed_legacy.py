"""``manage.py seed_legacy``: build a deterministic legacy SalesFlow database."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from migrator.config import get_config
from migrator.core.command_options import non_negative
from migrator.core.errors import MigrationError
from migrator.devtools.reset import reset_database, what_a_reset_drops
from migrator.devtools.seed import SeedError, SeedSpec, seed_legacy
from migrator.engine.lock import MigratorLock
from migrator.engine.orchestration import check_database


class Command(BaseCommand):
    help = (
        "Build a legacy SalesFlow database (one tenant_<id> schema per tenant plus the legacy auth "
        "schema) with realistic, deterministic data generated inside the server. For demos, tests "
        "and benchmarks."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenants", type=non_negative, default=3, help="Tenants with data (default 3).")
        parser.add_argument("--contacts", type=non_negative, default=100, help="Contacts per tenant (default 100).")
        parser.add_argument("--activities", type=non_negative, default=200, help="Activities per tenant (default 200).")
        parser.add_argument(
            "--empty-tenants", type=non_negative, default=0, help="Extra tenants with no contacts or activities."
        )
        parser.add_argument(
            "--users", type=non_negative, default=None, help="Legacy auth users (default 5 per tenant, at least 10)."
        )
        parser.add_argument(
            "--first-tenant-contacts",
            dest="first_contacts",
            type=non_negative,
            default=None,
            help="Contacts of the first tenant instead of --contacts (one large tenant among small ones).",
        )
        parser.add_argument(
            "--first-tenant-activities",
            dest="first_activities",
            type=non_negative,
            default=None,
            help="Activities of the first tenant instead of --activities.",
        )
        parser.add_argument("--seed", type=int, default=42, help="Random seed: the same seed gives the same data.")
        parser.add_argument(
            "--replace",
            action="store_true",
            help="Start over: drop every tenant_* schema, the legacy auth and archive schemas, empty the "
            "service tables and forget the registry, tracking history and service roles first. Asks "
            "before dropping anything unless --noinput.",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="With --replace: drop what is there without asking.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            check_database()
            with MigratorLock("seed_legacy"):
                self._seed(options)
        except (MigrationError, SeedError) as exc:
            raise CommandError(str(exc)) from exc

    def _seed(self, options: dict[str, Any]) -> None:
        config = get_config()
        spec = SeedSpec(**{f.name: options[f.name] for f in fields(SeedSpec)})  # one option per field
        if options["replace"]:
            self._confirm_replace(what_a_reset_drops(config), options["interactive"])
            for line in reset_database(config):
                self.stdout.write(f"  {line}", style_func=self.style.WARNING)
        started = time.monotonic()
        result = seed_legacy(spec, config.legacy_auth_schema, progress=self._progress(options["verbosity"]))
        self.stdout.write(
            self.style.SUCCESS(
                f"Seeded {len(result.tenant_ids)} tenants, {result.contacts} contacts, {result.activities} activities, "
                f"{result.users} users in {time.monotonic() - started:.1f}s"
            )
        )

    def _confirm_replace(self, found: str, interactive: bool) -> None:
        """--replace drops legacy data and a migration's history: asked first, like Django's ``flush``."""
        if not found or not interactive:
            return
        if not sys.stdin.isatty():
            raise CommandError(f"--replace would drop {found}: run it on a terminal to confirm, or pass --noinput")
        self.stdout.write(self.style.WARNING(f"--replace drops {found}, and every service role of this prefix."))
        if input("Type 'yes' to drop them: ").strip().lower() != "yes":
            raise CommandError("cancelled: nothing was dropped")

    def _progress(self, verbosity: int) -> Callable[[str], None]:
        def report(message: str) -> None:
            if verbosity >= 2:
                self.stdout.write(f"  {message}")

        return report
