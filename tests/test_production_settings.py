"""The production profile (DJANGO_ENV=production): `check --deploy` is clean, and startup refuses what is
missing or unsafe with one line. Each case is a `manage.py` child with its own environment."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests import warm_children

ROOT = Path(__file__).resolve().parents[1]
PROFILE_VARIABLES = ("DJANGO_ENV", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DJANGO_DEBUG")


def production_environment(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES and not k.startswith("SALESFLOW_")}
    # check never connects; a DATABASE_URL keeps the settings from starting the embedded server.
    env.setdefault("DATABASE_URL", "postgresql://localhost/check_deploy")
    env.update(
        DJANGO_ENV="production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="migrator.example.com",
    )
    env.update(overrides)
    return {k: v for k, v in env.items() if v}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return warm_children.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, text=True, timeout=120)


@pytest.mark.parametrize(
    "proxy",
    [
        {},  # gunicorn speaks TLS itself, or the proxy passes the scheme on: redirect and HSTS here
        {  # a proxy that terminates TLS, redirects to HTTPS and sends HSTS itself
            "SALESFLOW_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO",
            "SALESFLOW_SSL_REDIRECT": "0",
            "SALESFLOW_HSTS_SECONDS": "0",
        },
    ],
    ids=["tls-here", "tls-at-proxy"],
)
def test_check_deploy_is_clean(proxy: dict[str, str]) -> None:
    result = manage(production_environment(**proxy), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_proxy_header_reaches_the_settings() -> None:
    env = production_environment(SALESFLOW_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO")
    result = manage(env, "shell", "-c", "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "('HTTP_X_FORWARDED_PROTO', 'https')"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"DJANGO_SECRET_KEY": ""}, "needs DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "salesflow-migrator-local-only-key"}, "needs DJANGO_SECRET_KEY"),
        ({"DJANGO_ALLOWED_HOSTS": ""}, "needs DJANGO_ALLOWED_HOSTS"),
        ({"DJANGO_DEBUG": "1"}, "DEBUG off"),
        ({"DJANGO_ENV": "prod"}, "is not a profile"),
    ],
    ids=["no-key", "local-key", "no-hosts", "debug", "unknown-profile"],
)
def test_unsafe_production_settings_are_refused_in_one_line(overrides: dict[str, str], message: str) -> None:
    result = manage(production_environment(**overrides), "check")
    assert result.returncode == 1
    assert result.stderr.startswith("CommandError: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SALESFLOW_LOAD_SECONDS", "ten", "is not a number"),
        ("SALESFLOW_LOAD_SECONDS", "0", "set it from 0.001 to 3600.0"),
        ("SALESFLOW_LOAD_QUERIES", "-5", "set it 0 or more"),
    ],
)
def test_a_bad_load_test_default_is_refused_in_one_line(variable: str, value: str, message: str) -> None:
    env = production_environment(DJANGO_ENV="", DJANGO_SECRET_KEY="", DJANGO_ALLOWED_HOSTS="", **{variable: value})
    result = manage(env, "check")
    assert result.returncode == 1
    assert result.stderr.startswith(f"CommandError: {variable}=")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_local_profile_needs_nothing() -> None:
    env = production_environment(DJANGO_ENV="", DJANGO_SECRET_KEY="", DJANGO_ALLOWED_HOSTS="")
    assert manage(env, "check").returncode == 0


def test_a_failing_request_is_logged_with_its_traceback(tmp_path: Path) -> None:
    # No collectstatic into this static root: every admin page fails on its stylesheet's missing manifest entry.
    env = production_environment(SALESFLOW_STATIC_ROOT=str(tmp_path / "static"))
    code = (
        "from django.test import Client\n"
        "response = Client(raise_request_exception=False).get('/admin/login/', secure=True, "
        "HTTP_HOST='migrator.example.com')\n"
        "print(response.status_code)\n"
    )

    result = manage(env, "shell", "-c", code)

    assert result.stdout.splitlines()[-1] == "500", result.stderr
    assert "ERROR django.request: Internal Server Error: /admin/login/" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
