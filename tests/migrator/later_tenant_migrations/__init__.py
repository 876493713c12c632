"""contact_data's migrations plus one later migration (``MIGRATION_MODULES`` of later_migration_settings)."""
