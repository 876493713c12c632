"""The operator's admin: read-only migration records, the progress dashboard, tenant state, the drift report."""

from migrator.admin import drift, records, tenants

__all__ = ["drift", "records", "tenants"]
