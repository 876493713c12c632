"""verify's load_test step: the key queries under load on the legacy tables and on the new ones."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from psycopg import sql

from migrator import db
from migrator.config import get_config
from migrator.engine import tracking
from migrator.management.commands.migrate_phase import Command as MigratePhase
from migrator.models import Status
from migrator.ops.load_test import KEY_QUERIES, LEGACY, NEW, WRITE, service_role, table_name
from tests.helpers import run, table_fingerprint

TENANTS = ["acme_0001", "globex_0002"]


def load_record():
    return next(r for r in tracking.latest_records("verify").values() if r.step == "load_test")


def test_load_test_records_figures_for_both_layouts(migrated):
    run("migrate_phase", "security", interactive=False)
    tables = [(f"tenant_{tenant}", table) for tenant in TENANTS for table in ("contacts", "contact_data_contacts")]
    before = {table: table_fingerprint(*table) for table in tables}
    run("migrate_phase", "verify", interactive=False, load_clients=3, load_seconds=2.0, load_queries=300)

    record = load_record()
    assert record.status == Status.COMPLETED, record.error_message
    figures = record.details["load_test"]
    assert figures["clients"] == 3
    assert figures["tenants"] == 3
    for layout in (LEGACY, NEW):
        queries = figures["layouts"][layout]["queries"]
        # the legacy tables are only read: the write runs on the new ones
        assert set(queries) == set(KEY_QUERIES) - ({WRITE} if layout == LEGACY else set())
        for name, stats in queries.items():
            assert stats["error"] is None, (layout, name, stats["error"])
            assert stats["queries"] >= 1
            assert stats["qps"] > 0
            assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
    assert "queries/s" in record.details["message"]
    # every write was rolled back
    assert {table: table_fingerprint(*table) for table in tables} == before


def test_a_sites_load_test_defaults_replace_the_options_own_and_a_given_option_wins(migrated, settings):
    run("migrate_phase", "security", interactive=False)
    settings.SALESFLOW = {**settings.SALESFLOW, "LOAD_SECONDS": 0.4, "LOAD_QUERIES": 6}  # what the environment sets
    parser = MigratePhase().create_parser("manage.py", "migrate_phase")
    assert parser.parse_args(["verify"]).load_queries == 6
    assert parser.parse_args(["verify", "--load-queries", "12", "--load-seconds", "3"]).load_queries == 12
    assert parser.parse_args(["verify", "--load-seconds", "3"]).load_seconds == 3.0

    call_command(
        "migrate_phase", "verify", interactive=False, load_clients=1, load_max_regression=10_000.0, stdout=StringIO()
    )

    figures = load_record().details["load_test"]
    assert (figures["seconds"], figures["queries_wanted"]) == (0.4, 6)


def test_dates_a_client_cannot_hold_are_read_by_the_load_test_without_failing_it(migrated):
    """'infinity' and a year past 9999 are valid timestamps an application may store: the load test samples
    its keys among the others and reads the rows it asked for whatever they hold."""
    run("migrate_phase", "security", interactive=False)
    for table in ("activities", "activity_data_activities"):
        db.execute(sql.SQL("UPDATE {} SET due_at = 'infinity'").format(sql.Identifier("tenant_acme_0001", table)))
        db.execute(
            sql.SQL("UPDATE {} SET due_at = '20000-01-01' WHERE id IN (SELECT min(id) FROM {})").format(
                sql.Identifier("tenant_globex_0002", table), sql.Identifier("tenant_globex_0002", table)
            )
        )

    run(
        "migrate_phase",
        "verify",
        interactive=False,
        load_clients=1,
        load_seconds=2.0,
        load_queries=40,
        load_max_regression=10_000.0,
    )

    record = load_record()
    assert record.status == Status.COMPLETED, record.error_message
    for layout in (LEGACY, NEW):
        for name, stats in record.details["load_test"]["layouts"][layout]["queries"].items():
            assert stats["error"] is None, (layout, name, stats["error"])
            assert stats["queries"] >= 1


def test_load_test_fails_when_a_key_index_of_the_new_tables_is_missing(migrated):
    run("migrate_phase", "security", interactive=False)
    # One tenant of a real size is enough for a sequential scan to stand out from the noise: the same
    # 150,000 contacts on both sides (as a copy leaves them), then the email index of the new table gone.
    schema = f"tenant_{TENANTS[0]}"
    for table in ("contacts", "contact_data_contacts"):
        db.execute(
            sql.SQL(
                "INSERT INTO {} (id, first_name, last_name, email, created_at) "
                "SELECT 1000000 + g, 'Bulk', 'Contact', 'bulk' || g || '@example.com', now() "
                "FROM generate_series(1, 150000) g"
            ).format(sql.Identifier(schema, table))
        )
        db.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
    db.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, "contact_data_email_idx")))

    with pytest.raises(CommandError, match="phase verify failed"):  # the load test is one of its failed steps
        run(
            "migrate_phase",
            "verify",
            interactive=False,
            load_clients=2,
            load_seconds=1.5,
            load_queries=80,  # forty samples a query per client: a sequential scan stands out in any of them
            load_max_regression=50.0,  # the command's default (the test helpers' runs leave the verdict out)
        )

    record = load_record()
    assert record.status == Status.FAILED
    assert "contact by email" in record.error_message
    assert "legacy" in record.error_message
    assert "ms on the new tables against" in record.error_message
    figures = record.details["load_test"]["layouts"]
    assert (
        figures[NEW]["queries"]["contact by email"]["p95_ms"] > figures[LEGACY]["queries"]["contact by email"]["p95_ms"]
    )
    # the other key queries kept their indexes and pass
    assert "activities of a contact" not in record.error_message


def test_the_new_tables_are_loaded_through_their_services_role_and_the_legacy_ones_as_the_application(migrated):
    run("migrate_phase", "security", interactive=False)
    role = service_role(NEW, "activities", get_config())
    for tenant in [*TENANTS, "empty_0001"]:
        db.execute(
            sql.SQL("REVOKE SELECT ON {} FROM {}").format(
                sql.Identifier(f"tenant_{tenant}", table_name(NEW, "activities")), sql.Identifier(role)
            )
        )

    with pytest.raises(CommandError, match="phase verify failed"):
        run("migrate_phase", "verify", interactive=False, load_clients=1, load_seconds=1.0, load_queries=10)

    record = load_record()
    assert record.status == Status.FAILED
    layouts = record.details["load_test"]["layouts"]
    for name in ("activities of a contact", "upcoming activities"):
        assert "permission denied" in layouts[NEW]["queries"][name]["error"], name
        assert layouts[LEGACY]["queries"][name]["error"] is None  # the legacy tables as the application reads them
    assert layouts[NEW]["queries"]["contact by email"]["error"] is None  # another service's role, its own grants
