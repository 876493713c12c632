"""The admin as production runs it: gunicorn serving ``salesflow.wsgi`` with ``DJANGO_ENV=production``, static
files collected into a folder and served by WhiteNoise, driven by headless chromium.

gunicorn speaks TLS itself here (a throw-away certificate), so the profile runs as deployed: secure cookies,
HTTPS redirect, HSTS. The tracking rows are written before the browser starts; while the page is open, the
"phase" moves on through a separate connection, as a `migrate_phase` process would write them.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User

from migrator.models import Status
from tenants.models import MigrationState
from tests.admin.browser import ARTIFACTS, BROWSER_MARKS, CHROMIUM, PASSWORD, USERNAME, csp_violations
from tests.migrator.helpers import PROJECT_DIR, database_url, manage_env

FAILURE_LIMIT = 3
RUNNING_COPY = "data/acme/copy_table/contact_data_contacts"

pytestmark = [
    *BROWSER_MARKS,
    pytest.mark.long,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed for the server's certificate"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_serving(server: subprocess.Popen[str], url: str, timeout: float = 60) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"gunicorn exited with {server.returncode}: {server.communicate()[1]}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"gunicorn did not answer {url} within {timeout} s")


@pytest.fixture
def running_copy(make_tenant: Callable, make_record: Callable) -> None:
    """Phases 1 and 2 done for two tenants; globex's copy done, acme's running at 5 of 30 rows."""
    for tenant_id in ("acme", "globex"):
        make_tenant(tenant_id, state=MigrationState.SCHEMAS_READY)
        make_record("prepare", "register", tenant_id, target=f"tenant_{tenant_id}")
        make_record("schemas", "tenant_tables", tenant_id, target=f"tenant_{tenant_id}")
    make_record("data", "copy_table", "globex", target="contact_data_contacts", rows_copied=30, rows_expected=30)
    make_record("data", "copy_table", "acme", Status.RUNNING, target="contact_data_contacts", rows_copied=5)
    # Hashed the way the server checks it: the tests' own settings use a fast hasher production does not know.
    hasher = PBKDF2PasswordHasher()
    user = User.objects.create_superuser(USERNAME, "operator@example.com")
    user.password = hasher.encode(PASSWORD, hasher.salt())
    user.save(update_fields=["password"])


@pytest.fixture
def production_server(running_copy: None, tmp_path: Path) -> Iterator[str]:
    """gunicorn with the production profile on a free port; yields its base URL."""
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        [*openssl, "-keyout", key, "-out", cert],
        check=True,
        capture_output=True,
    )
    env = manage_env(
        DJANGO_ENV="production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        SALESFLOW_STATIC_ROOT=str(tmp_path / "static"),
        SALESFLOW_DASHBOARD_REFRESH_SECONDS="1",
        SALESFLOW_LOGIN_FAILURE_LIMIT=str(FAILURE_LIMIT),
    )
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collected.returncode == 0, collected.stderr
    port = free_port()
    gunicorn = [sys.executable, "-m", "gunicorn", "salesflow.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    server = subprocess.Popen(
        [*gunicorn, "--certfile", cert, "--keyfile", key],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        wait_until_serving(server, f"{url}/admin/login/")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def browser(production_server: str) -> Iterator[Any]:
    # After the server fixture: playwright's event loop in this thread makes Django refuse ORM calls.
    from playwright.sync_api import sync_playwright

    executable = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def new_page(browser: Any) -> Any:
    page = browser.new_context(ignore_https_errors=True, viewport={"width": 1600, "height": 1000}).new_page()
    page.set_default_timeout(15_000)
    return page


def log_in(page: Any, password: str) -> None:
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_load_state()


def move_the_copy_on(sql: str, *params: object) -> None:
    """What the running phase writes, from outside the server (autocommit, like each step's record)."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute(sql, params)


@pytest.mark.django_db(transaction=True)
def test_production_server_serves_the_admin_and_refreshes_the_dashboard(production_server: str, browser: Any) -> None:
    page = new_page(browser)
    refused = csp_violations(page)
    static: dict[str, Any] = {}
    page.on("response", lambda r: static.setdefault(r.url, r) if "/static/" in r.url else None)
    progress_requests: list[str] = []
    page.on("request", lambda r: progress_requests.append(r.url) if "/dashboard/progress/" in r.url else None)

    page.goto(f"{production_server}/admin/migrator/migrationrecord/dashboard/")
    assert "/admin/login/" in page.url
    log_in(page, PASSWORD)
    page.wait_for_selector("#phase-progress")
    assert page.url.endswith("/admin/migrator/migrationrecord/dashboard/")

    # CSS and JavaScript come from the application (WhiteNoise), under cache-busting hashed names.
    statuses = {url.split("/static/")[1]: response.status for url, response in static.items()}
    assert statuses, "no static file was requested"
    assert set(statuses.values()) == {200}, statuses
    names = list(statuses)
    assert any(n.startswith("admin/css/base.") and n.endswith(".css") and n != "admin/css/base.css" for n in names)
    assert any(n.startswith("migrator/dashboard.") and n.endswith(".js") for n in names), names
    script = next(r for url, r in static.items() if "/migrator/dashboard." in url)
    assert "immutable" in script.header_value("cache-control")
    header = page.evaluate("getComputedStyle(document.getElementById('header')).backgroundColor")
    assert header not in ("", "rgba(0, 0, 0, 0)")  # admin's base.css applied
    assert page.evaluate("location.protocol") == "https:"

    # The page refreshes itself while the copy runs: the same document (no reload) shows the new numbers.
    running = page.locator("#running-steps")
    assert running.is_visible()
    assert "5 / —" in running.inner_text()
    data = page.locator('tr.phase-row[data-phase="data"]')
    assert (data.locator(".done-count").inner_text(), data.locator(".running-count").inner_text()) == ("1", "1")
    page.evaluate("window.loadedOnce = true")
    page.wait_for_selector("#live-status:has-text('refreshing every 1 s')")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "production-dashboard-running.png"), full_page=True)

    # A failed answer (a proxy's 502 while the server restarts) is retried: the page says so and goes on.
    progress = "**/dashboard/progress/**"
    page.route(progress, lambda route: route.fulfill(status=502, body="bad gateway"))
    page.wait_for_selector("#live-status:has-text('refresh failed: HTTP 502; numbers as of ')")
    assert "retrying in 2 s" in page.inner_text("#live-status")
    page.unroute(progress)
    move_the_copy_on(
        "UPDATE public.schema_migrations SET rows_copied = 20, rows_expected = 30 WHERE migration_id = %s",
        RUNNING_COPY,
    )
    # (waits by selector: a wait_for_function string is an eval, which the page's policy refuses)
    page.wait_for_selector("#running-steps:has-text('20 / 30')")
    page.wait_for_selector("#live-status:has-text('refreshing every 1 s')")
    assert page.inner_text("#tenant-rows-moved") == "50"

    move_the_copy_on(
        "UPDATE public.schema_migrations SET status = %s, rows_copied = 30, completed_at = now(), "
        "duration = now() - started_at WHERE migration_id = %s",
        Status.COMPLETED.value,
        RUNNING_COPY,
    )
    page.wait_for_selector('tr.phase-row[data-phase="data"] .done-count:text-is("2")')
    assert data.locator(".phase-state").inner_text().lower() == "done"
    assert not running.is_visible()
    assert page.inner_text("#tenant-rows-moved") == "60"
    assert page.evaluate("window.loadedOnce") is True  # never reloaded

    # Nothing runs any more: the page stops asking.
    page.wait_for_selector("#live-status:has-text('live refresh stopped')")
    asked = len(progress_requests)
    page.wait_for_timeout(2_500)
    assert len(progress_requests) == asked
    page.screenshot(path=str(ARTIFACTS / "production-dashboard-done.png"), full_page=True)
    assert refused == []  # the admin's and the dashboard's scripts and styles within the Content-Security-Policy

    # A session that ends while the page refreshes (signed out elsewhere, expired): one line, no more asking.
    move_the_copy_on(
        "UPDATE public.schema_migrations SET status = %s, completed_at = NULL WHERE migration_id = %s",
        Status.RUNNING.value,
        RUNNING_COPY,
    )
    page.reload()
    page.wait_for_selector("#live-status:has-text('refreshing every 1 s')")
    move_the_copy_on("DELETE FROM public.django_session")
    page.wait_for_selector("#live-status:has-text('live refresh stopped: signed out')")
    asked = len(progress_requests)
    page.wait_for_timeout(2_500)
    assert len(progress_requests) == asked


@pytest.mark.django_db(transaction=True)
def test_production_server_locks_out_after_failed_logins(production_server: str, browser: Any) -> None:
    page = new_page(browser)
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/admin/login/") else None)
    page.goto(f"{production_server}/admin/login/")
    for _ in range(FAILURE_LIMIT - 1):
        log_in(page, "wrong-password")
        assert "Please enter the correct username and password" in page.inner_text("#content")
    log_in(page, "wrong-password")
    assert "too many login attempts" in page.inner_text("body")
    assert statuses[-1] == 429

    # Locked: the right password does not get in either, not even from a fresh browser session.
    page = new_page(browser)
    page.goto(f"{production_server}/admin/login/")
    log_in(page, PASSWORD)
    assert "too many login attempts" in page.inner_text("body")
    assert "/admin/login/" in page.url
