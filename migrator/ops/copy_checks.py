"""Refusals before a table is copied, so that nothing is copied at all: a legacy column with no target
column, a legacy table with inheritance children (whose rows a copy of the table's own rows would leave
behind)."""

from __future__ import annotations

from migrator import catalog
from migrator.core.errors import MigrationError
from migrator.ops.table_copy import TableCopy
from migrator.ops.target_columns import refuse_unmapped_legacy_columns


def check_columns(copy: TableCopy) -> None:
    """Refuse before copying anything when a legacy column has no target column."""
    refuse_unmapped_legacy_columns(
        (copy.source_schema, copy.source_table),
        (copy.target_schema, copy.target_table),
        "copied",
        copy.schema_catalog,
    )


def refuse_inheritance_children(schema: str, tables: list[str], scope: str, remedy: str) -> None:
    """Refuse when a legacy table of ``tables`` has inheritance children.

    Every read of a legacy table takes the table's own rows only (``ONLY``): a child's rows have
    columns of their own, and the target has no place for them. Refused even when the child is
    empty: a row written to it later would be left behind unseen, and the child would stay in the
    tenant schema, attached to an archived parent, after cutover. Partitions are not children here.
    """
    children = catalog.inheritance_children(schema, tables)
    if children:
        found = ", ".join(f"{c.schema}.{c.table} ({c.rows} rows) inherits from {schema}.{c.parent}" for c in children)
        raise MigrationError(
            f"{scope}: legacy tables have inheritance children whose rows would not be copied: {found}; "
            f"nothing was copied for it: {remedy}"
        )
