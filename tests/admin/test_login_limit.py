"""Failed admin logins are limited (django-axes): after the limit, even the right password is refused."""

from __future__ import annotations

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from tests.admin.helpers import PASSWORD


def log_in(client: Client, username: str, password: str) -> int:
    response = client.post(reverse("admin:login"), {"username": username, "password": password})
    return response.status_code


@pytest.mark.django_db
def test_too_many_failed_logins_lock_the_account_from_that_address() -> None:
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    client = Client()
    limit = settings.AXES_FAILURE_LIMIT
    # Below the limit a wrong password is the login form again (200), not a lock.
    assert [log_in(client, "operator", "wrong") for _ in range(limit - 1)] == [200] * (limit - 1)
    assert log_in(client, "operator", "wrong") == 429  # the limit-th failure locks
    locked = client.post(reverse("admin:login"), {"username": "operator", "password": PASSWORD})
    assert locked.status_code == 429
    assert b"too many login attempts" in locked.content
    assert "_auth_user_id" not in client.session
    # The refused right password counts as one more failure.
    assert AccessAttempt.objects.get(username="operator").failures_since_start == limit + 1

    # Another operator logging in from the same address is not locked out with them.
    User.objects.create_superuser("reviewer", "reviewer@example.com", PASSWORD)
    assert log_in(Client(), "reviewer", PASSWORD) == 302


@pytest.mark.django_db
def test_a_successful_login_below_the_limit_works() -> None:
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    client = Client()
    assert log_in(client, "operator", "wrong") == 200
    assert log_in(client, "operator", PASSWORD) == 302
    assert client.get(reverse("admin:migrator_migrationrecord_dashboard")).status_code == 200
