"""``--plan`` shows each step's SQL without reading what every tenant shares once per tenant: phase 2's
tenant migrations are rendered once for all schemas that have none applied yet (every tenant before
phase 2: a third of a second each, an hour for a plan of 10,000 tenants), and per schema otherwise."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from migrator.django_migrations import migrate_schema
from tests.helpers import run

CONTACTS_TABLE = 'CREATE TABLE "contact_data_contacts"'
ACTIVITIES_TABLE = 'CREATE TABLE "activity_data_activities"'


def tenant_lines(plan: str, tenant: str) -> list[str]:
    """The plan's lines from the tenant's step to the next step."""
    lines = plan.splitlines()
    start = next(i for i, line in enumerate(lines) if f"[{tenant}]" in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    return lines[start + 1 : end]


def test_the_schemas_plan_renders_the_shared_tenant_sql_once_and_a_schema_with_migrations_on_its_own(
    prepared: dict[str, Any],
) -> None:
    tenants = prepared["tenants"]
    migrate_schema(f"tenant_{tenants[1]}", ["contact_data"])  # half built: by hand, or a run killed half way

    with CaptureQueriesContext(connection) as captured:
        plan = run("migrate_phase", "schemas", "--plan")

    assert not any(CONTACTS_TABLE in line for line in tenant_lines(plan, tenants[1])), plan
    assert any(ACTIVITIES_TABLE in line for line in tenant_lines(plan, tenants[1])), plan
    fresh = [tenant_lines(plan, tenant) for tenant in (tenants[0], tenants[2])]
    assert any(CONTACTS_TABLE in line for line in fresh[0]), plan
    assert fresh[1] == fresh[0]
    applied_read = [q["sql"] for q in captured.captured_queries if '"django_migrations"' in q["sql"]]
    # public's, the half-built tenant's, and one for all the tenants that have none
    assert len(applied_read) <= 3, applied_read
