"""Which columns a copy writes: the target table's columns as the catalog has them now.

Deploys keep running while the migration does (docs/deploys.md), so the target tables are whatever
the migrations applied in each schema made them, not what the running release's models say: a
deploy may have added a column this release does not know, and this release may know a column whose
migration a schema has not had yet. The catalog decides; the model only lends a default.

A target column the legacy table lacks gets, on insert, in this order: its database default (or
identity); the Django field's default, when the running release's model knows the field (what
Django's ``AddField`` gave the rows that existed when the migration ran); NULL when it is nullable.
A NOT NULL column with none of these cannot be filled: every copy that would insert into it is
refused in one line naming it (see :class:`Fill`).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from migrator import catalog, db
from migrator.catalog import SchemaCatalog
from migrator.core.errors import MigrationError
from migrator.tables import NO_DEFAULT, field_default, unmapped_columns

Relation = tuple[str, str]  # (schema, table)


@dataclass(frozen=True)
class Fill:
    """A target column the legacy table lacks, given one value by every insert of the copy.

    ``expression``: the value as SQL text (a literal cast to the column's type, rendered by psycopg);
    empty when there is nothing to fill the NOT NULL column with, and ``refusal`` says so.
    """

    column: str
    expression: str = ""
    refusal: str = ""

    def value(self) -> sql.Composable:
        if not self.expression:
            raise MigrationError(self.refusal)
        return sql.SQL(self.expression)  # psycopg's own rendering of a literal and a format_type() name


@dataclass(frozen=True)
class TargetColumns:
    """``copied``: target columns the legacy table has too, in the target's order; ``fills``: target columns
    it lacks that an insert must be given a value for."""

    copied: tuple[str, ...]
    fills: tuple[Fill, ...]


def target_columns(
    source: Relation, target: Relation, model_label: str, schema_catalog: SchemaCatalog
) -> TargetColumns:
    """The columns a copy of ``source`` into ``target`` writes (both exist; see the module docstring).

    Target columns with a database default, and nullable ones the model has no default for, are left
    out of the inserts: the database gives them their default or NULL, as it does for the application.
    """
    legacy = {c.name for c in schema_catalog.columns(*source)}
    copied: list[str] = []
    fills: list[Fill] = []
    for column in schema_catalog.columns(*target):
        if column.name in legacy:
            copied.append(column.name)
        elif not column.has_default:
            fill = column_fill(source, target, model_label, column)
            if fill is not None:
                fills.append(fill)
    return TargetColumns(tuple(copied), tuple(fills))


def column_fill(source: Relation, target: Relation, model_label: str, column: catalog.Column) -> Fill | None:
    """How inserts fill ``column`` of ``target``, which ``source`` lacks and which has no database
    default: the model's default, else nothing (None: NULL) when nullable, else a refusal."""
    default = field_default(model_label, column.name)
    if default is NO_DEFAULT or (default is None and not column.nullable):
        if column.nullable:
            return None
        return Fill(
            column.name,
            refusal=(
                f"{'.'.join(target)}.{column.name} is NOT NULL without a database default, the legacy table "
                f"{'.'.join(source)} has no such column, and this release's model gives it no default; nothing was "
                f"written to it: give the column a database default (ALTER TABLE ... ALTER COLUMN {column.name} SET "
                "DEFAULT ...) or run the migrator from the release whose migration added it"
            ),
        )
    # format_type() output: PostgreSQL's own spelling of the column's type
    literal = sql.SQL("CAST({} AS {})").format(sql.Literal(default), sql.SQL(column.data_type))
    return Fill(column.name, expression=db.render(literal))


def refuse_unmapped_legacy_columns(
    source: Relation, target: Relation, what: str, schema_catalog: SchemaCatalog
) -> None:
    """Refuse before copying anything when a legacy column has no column in the target table (as the
    catalog has it): its values would be lost. ``what``: what was not done (``copied``, ``merged``)."""
    extra = unmapped_columns(
        [c.name for c in schema_catalog.columns(*source)], {c.name for c in schema_catalog.columns(*target)}
    )
    if extra:
        raise MigrationError(
            f"{'.'.join(source)} has columns with no target column: {', '.join(extra)}; nothing was {what} (add "
            "them to the target model, or drop them from the legacy table deliberately)"
        )
