"""Fixtures for the admin tests: tracking rows and registry rows written directly, and users.

Records are created with explicit times and statuses so the dashboard's numbers can be checked
exactly; tenants are registered without creating their schema (as phase 1 does), which keeps
these tests fast and inside one rolled-back transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from migrator.models import MigrationRecord, Status
from migrator.phases import ORDERED
from tenants.models import Domain, MigrationState, Tenant
from tests.admin.helpers import PASSWORD, T0, staff_user

PHASE_NUMBERS = {p.name: p.number for p in ORDERED}


@pytest.fixture
def make_tenant(db: None) -> Callable[..., Tenant]:
    def make(
        tenant_id: str, state: str = MigrationState.REGISTERED, active: bool = True, domains: tuple[str, ...] = ()
    ) -> Tenant:
        tenant = Tenant(
            tenant_id=tenant_id, name=tenant_id.replace("_", " ").title(), migration_state=state, active=active
        )
        tenant.auto_create_schema = False  # a registry row only: these tests never touch tenant tables
        tenant.save()
        for index, domain in enumerate(domains):
            Domain.objects.create(domain=domain, tenant=tenant, is_primary=index == 0)
        return tenant

    return make


@pytest.fixture
def make_record(db: None) -> Callable[..., MigrationRecord]:
    def make(
        phase: str,
        step: str,
        tenant_id: str | None = None,
        status: str = Status.COMPLETED,
        *,
        target: str = "",
        attempt: int = 1,
        start: timedelta | None = timedelta(0),
        took: timedelta | None = timedelta(seconds=1),
        **fields: Any,
    ) -> MigrationRecord:
        key = "/".join([phase, tenant_id or "*", step] + ([target] if target else []))
        started = None if start is None else T0 + start
        completed = None
        if started is not None and took is not None and status not in (Status.PENDING, Status.RUNNING):
            completed = started + took
        return MigrationRecord.objects.create(
            migration_id=key,
            phase=phase,
            phase_number=PHASE_NUMBERS.get(phase),
            tenant_id=tenant_id,
            step=step,
            target=target,
            attempt=attempt,
            status=status,
            started_at=started,
            completed_at=completed,
            duration=(completed - started) if completed and started else None,
            **fields,
        )

    return make


@pytest.fixture
def superuser_client(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", PASSWORD))
    return client


@pytest.fixture
def viewer_client(db: None) -> Client:
    """Staff with view permission on records, drift findings and tenants only: the reviewer's account."""
    client = Client()
    client.force_login(
        staff_user(
            "viewer",
            "migrator.view_migrationrecord",
            "migrator.view_driftfinding",
            "tenants.view_tenant",
            "tenants.view_domain",
        )
    )
    return client
