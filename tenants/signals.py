"""Signals of the tenant registry's deploy tooling (the migrator listens; the registry never imports it)."""

from __future__ import annotations

from django.dispatch import Signal

# Sent by the behind-only ``migrate_schemas`` executor at the end of a run over the tenant schemas, in
# the parent process, on the public schema: ``schemas`` (how many tenant schemas the run was given) and
# ``failed`` ({schema: one-line reason}: the schemas that failed to migrate or were refused). A run
# with nothing failed clears what an earlier run recorded.
tenant_schemas_migrated = Signal()
