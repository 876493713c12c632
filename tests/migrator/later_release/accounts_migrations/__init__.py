"""accounts's migrations plus the later release's (``MIGRATION_MODULES`` of later_release_settings)."""
