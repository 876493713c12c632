"""Reliability: a legacy database that already has a ``public.tenants`` (the plan's count query reads
one with ``tenant_id`` and ``active``) is adopted by phase 1, or refused with one line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import CommandError

from migrator import catalog, db
from migrator.config import get_config
from migrator.django_migrations import migrate_schema
from tenants.models import MigrationState, Tenant
from tests.helpers import run
from tests.migrator.helpers import count, one_line, rows


def drop_registry() -> None:
    db.execute("DROP TABLE IF EXISTS public.domains, public.tenants CASCADE")
    db.execute("DELETE FROM public.django_migrations WHERE app = 'tenants'")


@pytest.fixture
def legacy_registry(seeded: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The seeded legacy tenants listed in a legacy public.tenants of its own shape (globex inactive)."""
    drop_registry()
    db.execute(
        "CREATE TABLE public.tenants (tenant_id text PRIMARY KEY, id integer NOT NULL UNIQUE, name text NOT NULL, "
        "active boolean NOT NULL DEFAULT true, plan_tier text NOT NULL, signed_up date)"
    )
    db.execute(
        "INSERT INTO public.tenants VALUES ('acme_0001', 10, 'Acme Corporation', true, 'gold', '2019-04-01'), "
        "('globex_0002', 20, 'Globex', false, 'silver', NULL), "
        "('empty_0001', 30, 'Empty Ltd', true, 'free', '2021-01-31')"
    )
    yield seeded
    drop_registry()  # the next test gets the registry its migrations build
    migrate_schema("public", ["tenants"])


def test_all_adopts_a_legacy_public_tenants(legacy_registry):
    legacy_contacts = count("tenant_globex_0002", "contacts")

    run("migrate_phase", "all", interactive=False)

    adopted = {t.tenant_id: (t.pk, t.name, t.active, t.migration_state) for t in Tenant.objects.all()}
    assert adopted == {
        "acme_0001": (10, "Acme Corporation", True, MigrationState.LIVE),
        "globex_0002": (20, "Globex", False, MigrationState.LIVE),  # migrated, still inactive
        "empty_0001": (30, "Empty Ltd", True, MigrationState.LIVE),
    }
    assert sorted(rows("SELECT tenant_id, plan_tier, signed_up::text FROM public.tenants")) == [
        ("acme_0001", "gold", "2019-04-01"),
        ("empty_0001", "free", "2021-01-31"),
        ("globex_0002", "silver", None),
    ]
    assert count("tenant_globex_0002", "contact_data_contacts") == legacy_contacts > 0
    archive = get_config().archive_schema
    assert count(archive, "public__tenants") == 3  # the legacy table itself, as it was
    fresh = Tenant(tenant_id="fresh", name="Fresh")
    fresh.auto_create_schema = False
    fresh.save()
    assert fresh.pk == 31  # new tenants continue after the adopted ids


def test_plan_with_a_legacy_public_tenants_changes_nothing(legacy_registry):
    out = run("migrate_phase", "prepare", plan=True)

    assert "register" in out
    assert not catalog.table_exists("public", "domains")
    assert count("public", "tenants") == 3


def test_a_legacy_public_tenants_that_cannot_be_adopted_is_refused_with_one_line(legacy_registry):
    db.execute("INSERT INTO public.tenants VALUES ('Bad-Id', 40, 'Bad', true, 'gold', NULL)")

    with pytest.raises(CommandError) as exc:
        run("migrate_phase", "all", interactive=False)

    message = str(exc.value)
    assert one_line(message)
    assert message.startswith(
        "phase prepare failed: 1 step(s) failed, first [all] bootstrap: cannot adopt the "
        "existing public.tenants as the tenant registry: tenant ids that are not valid"
    )
    assert "'Bad-Id'" in message
    assert count("public", "tenants") == 4
    assert not catalog.table_exists("public", "domains")
