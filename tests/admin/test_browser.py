"""The operator's walk through the admin in a real browser (Debian's chromium, headless).

A real phase run on seeded legacy data provides the records; one tenant gets a legacy column with
no target so its copy step fails. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError

from migrator import db
from migrator.models import MigrationRecord, Status
from tests.admin.browser import ARTIFACTS, BROWSER_MARKS, CHROMIUM, PASSWORD, USERNAME, csp_violations
from tests.helpers import run

pytestmark = BROWSER_MARKS


@pytest.fixture
def browser_page() -> Iterator[Any]:
    # Imported here so collecting the other admin tests never needs playwright.
    from playwright.sync_api import sync_playwright

    executable = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            browser.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"admin-{name}.png"), full_page=True)


@pytest.fixture
def migrated_with_one_failure(seeded: dict[str, Any]) -> MigrationRecord:
    """Phases 1-3 on seeded data; acme's contacts gain a column with no target, so its copy fails."""
    run("migrate_phase", "prepare", interactive=False)
    db.execute("ALTER TABLE tenant_acme_0001.contacts ADD COLUMN loyalty int")
    run("migrate_phase", "schemas", interactive=False)
    with pytest.raises(CommandError, match="loyalty"):
        run("migrate_phase", "data", interactive=False)
    User.objects.create_superuser(USERNAME, "operator@example.com", PASSWORD)
    return MigrationRecord.objects.get(status=Status.FAILED)


@pytest.mark.django_db(transaction=True)
def test_operator_walkthrough(migrated_with_one_failure: MigrationRecord, live_server: Any, browser_page: Any) -> None:
    # All database work is done above: playwright's sync API runs an event loop in this thread,
    # where Django refuses ORM calls.
    failed = migrated_with_one_failure
    assert failed.migration_id == "data/acme_0001/copy_table/contact_data_contacts"
    page = browser_page
    refused = csp_violations(page)

    page.goto(f"{live_server.url}/admin/migrator/migrationrecord/dashboard/")
    assert "/admin/login/" in page.url  # anonymous: sent to the login page, back here afterwards
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/admin/migrator/migrationrecord/dashboard/$"))

    page.goto(f"{live_server.url}/admin/")
    shot(page, "index")
    page.click("#migration-dashboard-link")
    page.wait_for_selector("#failed-steps")
    assert page.inner_text("#failed-steps h2") == "Failed steps (1)"
    prepare = page.locator('tr.phase-row[data-phase="prepare"]')
    assert prepare.locator(".done-count").inner_text() == "3"
    data = page.locator('tr.phase-row[data-phase="data"]')
    assert (data.locator(".done-count").inner_text(), data.locator(".failed-count").inner_text()) == ("2", "1")
    assert len(page.inner_text(".backup-sha256").strip()) == 64
    assert page.inner_text("#rows-validated") != "0"
    shot(page, "dashboard")

    link = page.locator("a.failed-step-link", has_text=failed.migration_id)
    link.click()
    page.wait_for_url(re.compile(rf"/admin/migrator/migrationrecord/{failed.pk}/change/$"))
    error = page.inner_text("pre.sf-error")
    assert "loyalty" in error
    assert "no target column" in error
    assert page.locator("input[name=_save]").count() == 0  # read-only
    shot(page, "failed-record")

    page.goto(f"{live_server.url}/admin/migrator/migrationrecord/")
    page.locator("#changelist-filter a", has_text=re.compile(r"^failed$", re.IGNORECASE)).click()
    page.wait_for_url(re.compile(r"status__exact=FAILED"))
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert failed.migration_id in rows.first.inner_text()
    shot(page, "records-failed")

    page.goto(f"{live_server.url}/admin/tenants/tenant/")
    acme = page.locator("#result_list tbody tr", has_text="acme_0001")
    assert "FAILED" in acme.inner_text()
    shot(page, "tenants")
    assert refused == []  # every page of the walk within the Content-Security-Policy
