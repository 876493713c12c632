"""Helpers shared by the test packages: commands in process and fingerprints of the legacy tables.

Everything reads the real database; nothing here replaces a query with a stand-in.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

from django.core.management import call_command
from psycopg import sql

from migrator import catalog, db
from migrator.config import get_config
from migrator.core.command_options import arguments_of
from migrator.core.context import RunOptions
from migrator.devtools.reset import reset_database
from migrator.django_migrations import migrate_schema
from migrator.tables import LEGACY_AUTH_TABLES, LEGACY_TENANT_TABLES, service_tables

# A verify run's load test, shortened where the test is not about the load test (those set their own),
# and its latency verdict left out there: on a machine busy with other tests the p95 of a few hundred
# millisecond queries moves by more than the noise floor, and such a test is about something else.
QUICK_LOAD_TEST = {"load_clients": 1, "load_seconds": 0.5, "load_queries": 4, "load_max_regression": 10_000.0}
RUNS_VERIFY = ("verify", "5", "all", "rehearse")
# The same, as arguments of a ``manage.py migrate_phase`` child.
QUICK_LOAD_ARGUMENTS = arguments_of(RunOptions(**QUICK_LOAD_TEST), tuple(QUICK_LOAD_TEST))


def run(command: str, *args: str, **options: Any) -> str:
    """``call_command`` returning what the command printed."""
    if command == "migrate_phase" and args and args[0] in RUNS_VERIFY:
        options = {**QUICK_LOAD_TEST, **options}
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def restore_clean_database() -> None:
    """Drop every schema and role tests made; rebuild service schemas a rollback may have dropped."""
    reset_database(get_config())
    if not all(catalog.schema_exists(schema) for schema in service_tables()):
        migrate_schema("public")


def table_fingerprint(schema: str, table: str) -> tuple[int, str]:
    """Row count and an md5 over all rows in id order (test helper, small tables only)."""
    return db.fetchone(
        sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t").format(
            sql.Identifier(schema, table)
        )
    )  # type: ignore[return-value]


def legacy_fingerprints(tenants: list[str]) -> dict[str, tuple[int, str]]:
    config = get_config()
    prints = {
        f"{config.legacy_auth_schema}.{t}": table_fingerprint(config.legacy_auth_schema, t) for t in LEGACY_AUTH_TABLES
    }
    for tenant in tenants:
        for table in LEGACY_TENANT_TABLES:
            if catalog.table_exists(f"tenant_{tenant}", table):
                prints[f"tenant_{tenant}.{table}"] = table_fingerprint(f"tenant_{tenant}", table)
    return prints
