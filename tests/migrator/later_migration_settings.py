"""The project's settings with one later tenant migration (tests/migrator/later_tenant_migrations)."""

from salesflow.settings import *  # noqa: F403

MIGRATION_MODULES = {"contact_data": "tests.migrator.later_tenant_migrations"}
