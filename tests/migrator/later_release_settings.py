"""A later release: its migrations (tests/migrator/later_release) and its models, which know their fields."""

from salesflow.settings import *  # noqa: F403
from salesflow.settings import INSTALLED_APPS

MIGRATION_MODULES = {
    "accounts": "tests.migrator.later_release.accounts_migrations",
    "contact_data": "tests.migrator.later_release.contact_data_migrations",
}
INSTALLED_APPS = [*INSTALLED_APPS, "tests.migrator.later_release.apps.LaterReleaseConfig"]
