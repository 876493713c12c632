"""The operator's admin: read-only migration records, the progress dashboard, tenant state."""

from migrator.admin import records, tenants

__all__ = ["records", "tenants"]
