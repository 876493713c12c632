"""Drift: every way a tenant's legacy tables differ from the shape the table registry expects.

A ten-year-old database is not uniform: tenants created by different releases, patched by hand,
"optimised" by a DBA. Phase 1 inspects every tenant schema before anything changes and classifies
each difference (a :class:`Finding`):

- ``CARRIED``: the migrator carries it over exactly (a partitioned table, a CHECK constraint, an
  integer widened to bigint whose every value is checked before copying, a sequence ahead of max(id));
- ``DECISION``: it cannot be carried exactly and an explicit option says what to do (a table named
  ``"Contacts"``, an unknown table holding rows, a legacy-only foreign key); given that option, the
  finding is ``DECIDED`` and records the option;
- ``REFUSED``: the tenant cannot be migrated as it is (a legacy column with no target column, a
  target column with no legacy column, an inheritance child holding rows, NULLs a NOT NULL target
  column refuses); the remedy is to fix the legacy table or leave the tenant out with
  ``--skip-schema``.

The catalog is read for many schemas per query (:data:`SCHEMAS_PER_QUERY`); only the rare drifted
columns cost a look at their values. Nothing here changes the database.
"""

from migrator.ops.drift.findings import Decisions, Finding, FindingGroup, group_findings
from migrator.ops.drift.rules import dependent_finding, inspect_schemas

__all__ = ["Decisions", "Finding", "FindingGroup", "dependent_finding", "group_findings", "inspect_schemas"]
