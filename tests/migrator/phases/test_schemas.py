"""Phase 2: namespaced tenant tables with the legacy columns and the right foreign keys; --tenant."""

from __future__ import annotations

import pytest
from django.core.management import CommandError

from migrator.models import Status
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.helpers import latest, one_line, records, rows, table_names

TARGETS = {"contacts": "contact_data_contacts", "activities": "activity_data_activities"}


def columns(schema: str, table: str) -> dict[str, str]:
    return dict(
        rows(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            [schema, table],
        )
    )


def foreign_keys(schema: str, table: str) -> set[tuple[str, str]]:
    """``(column, referenced schema.table)`` of every foreign key of the table."""
    return set(
        rows(
            "SELECT a.attname, rn.nspname || '.' || r.relname FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
            "JOIN pg_class r ON r.oid = c.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
            "WHERE c.contype = 'f' AND n.nspname = %s AND t.relname = %s",
            [schema, table],
        )
    )


def test_target_tables_keep_legacy_columns_and_types_and_reference_the_shared_tables(schemas_ready):
    for tenant in ("acme_0001", "globex_0002"):
        schema = f"tenant_{tenant}"
        for legacy, target in TARGETS.items():
            assert columns(schema, target) == columns(schema, legacy), f"{schema}.{target}"
        assert foreign_keys(schema, "contact_data_contacts") == {("contact_type_id", "contact.contact_types")}
        assert foreign_keys(schema, "activity_data_activities") == {
            ("contact_id", f"{schema}.contact_data_contacts"),
            ("activity_type_id", "activity.activity_types"),
        }
        assert "django_migrations" in table_names(schema)  # each tenant records its own migrations


def test_tenant_option_limits_the_run_to_that_tenant(prepared):
    out = run("migrate_phase", "schemas", interactive=False, tenant=["globex_0002"])

    assert "Phase schemas: 2 steps to run" in out  # the phase-wide step and globex
    assert "contact_data_contacts" in table_names("tenant_globex_0002")
    assert "contact_data_contacts" not in table_names("tenant_acme_0001")
    assert [r.tenant_id for r in records(phase="schemas")] == [None, "globex_0002"]
    assert Tenant.objects.get(tenant_id="acme_0001").migration_state == MigrationState.REGISTERED

    out = run("migrate_phase", "schemas", interactive=False)

    assert "Phase schemas: 2 steps to run" in out  # the two tenants left
    assert latest("schemas/acme_0001/tenant_tables/tenant_acme_0001").status == Status.COMPLETED
    assert len(records(phase="schemas")) == 4


def test_an_unknown_tenant_is_one_line_and_runs_nothing(prepared):
    with pytest.raises(CommandError, match=r"^unknown tenant 'nope': not in public\.tenants") as exc:
        run("migrate_phase", "schemas", interactive=False, tenant=["acme_0001", "nope"])
    assert one_line(str(exc.value))
    assert not records(phase="schemas")
    assert "contact_data_contacts" not in table_names("tenant_acme_0001")
