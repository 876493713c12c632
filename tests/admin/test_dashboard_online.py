"""The online migration's lag on the dashboard: per captured schema, rows captured and not yet applied, and the
age of the oldest, read from the real capture tables."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from migrator import db
from migrator.ops import capture
from migrator.reports.dashboard import build_dashboard


def captured(scope: str, table: str, changes: int, oldest_minutes: int) -> None:
    """``changes`` capture rows of ``scope.table``, the oldest ``oldest_minutes`` ago (as the triggers write them)."""
    db.execute(
        "INSERT INTO migrator_online.captured_tables (scope, tbl, key_columns, ready) VALUES (%s, %s, '{id}', true)",
        [scope, table],
    )
    db.execute(
        "INSERT INTO migrator_online.changes (scope, tbl, key, op, captured_at) "
        "SELECT %s, %s, jsonb_build_array(n), 'U', clock_timestamp() - make_interval(mins => %s) * (n = 1)::int "
        "FROM generate_series(1, %s) n",
        [scope, table, oldest_minutes, changes],
    )


@pytest.mark.django_db
def test_dashboard_shows_the_lag_per_tenant(viewer_client: Client, make_tenant) -> None:
    make_tenant("acme")
    make_tenant("globex")
    assert build_dashboard().lag == []  # capture off: no section
    assert (
        'id="online-lag"' not in viewer_client.get(reverse("admin:migrator_migrationrecord_dashboard")).content.decode()
    )

    capture.ensure_capture_schema()
    captured("tenant_acme", "contacts", 1234, oldest_minutes=3)
    captured("tenant_globex", "contacts", 0, oldest_minutes=0)
    captured("salesflow_auth", "users", 2, oldest_minutes=0)

    lag = {row.scope: row for row in build_dashboard().lag}
    assert [row.scope for row in build_dashboard().lag] == ["tenant_acme", "salesflow_auth", "tenant_globex"]
    assert (lag["tenant_acme"].tenant_id, lag["tenant_acme"].pending) == ("acme", 1234)
    assert 180 <= (lag["tenant_acme"].oldest_seconds or 0) < 240
    assert (lag["tenant_globex"].pending, lag["tenant_globex"].oldest_seconds) == (0, None)
    assert lag["salesflow_auth"].tenant_id is None

    page = viewer_client.get(reverse("admin:migrator_migrationrecord_dashboard")).content.decode()
    assert 'id="online-lag"' in page
    assert "<code>tenant_acme</code>" in page
    assert '<td class="num lag-pending">1,234</td>' in page
    assert '<td class="num lag-oldest">3 min 0 s</td>' in page
    assert "(legacy auth)" in page
