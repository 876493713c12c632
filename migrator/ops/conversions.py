"""Columns whose legacy type differs from the target's (:func:`migrator.ops.table_copy.type_differences`):
which conversions are provably exact, and the refusal, before anything is copied, of legacy values a
conversion would change; the legacy application's time zone for its ``timestamp`` columns."""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import DataError, NotSupportedError, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.core.context import RunOptions
from migrator.core.errors import MigrationError
from migrator.ops.table_copy import (
    JSON_OID,
    JSONB_OID,
    TableCopy,
    TypeDifference,
    type_differences,
    zoned_columns,
)

LEGACY_TIMEZONE_OPTION = "--legacy-timezone"
DATABASE_SETTING = "database setting"


def legacy_timezone(options: RunOptions) -> tuple[str, str]:
    """The legacy application's time zone and where it came from (``--legacy-timezone`` or the
    database's default ``timezone`` setting, the one a new session of the legacy application gets)."""
    if options.legacy_timezone is None:
        return catalog.database_timezone(), DATABASE_SETTING
    if not catalog.timezone_known(options.legacy_timezone):
        raise MigrationError(
            f"--legacy-timezone {options.legacy_timezone!r}: no such time zone on this server; give a name from "
            "pg_timezone_names, e.g. America/New_York or UTC"
        )
    return options.legacy_timezone, LEGACY_TIMEZONE_OPTION


# Conversions the catalog proves exact, so no row needs to be read: (legacy type, target type) by
# format_type spelling; a varchar(n) or numeric(p,s) into the same type without a limit as well.
_WIDENINGS = {
    ("smallint", "integer"),
    ("smallint", "bigint"),
    ("integer", "bigint"),
    ("smallint", "numeric"),
    ("integer", "numeric"),
    ("bigint", "numeric"),
    ("character varying", "text"),
}


def _provably_exact(difference: TypeDifference) -> bool:
    legacy, target = difference.legacy_type, difference.target_type
    unlimited = legacy.split("(", 1)[0] if legacy.endswith(")") else legacy
    return (legacy, target) in _WIDENINGS or (unlimited, target) in {
        ("character varying", "text"),
        ("character varying", "character varying"),
        ("numeric", "numeric"),
    }


def _round_trip(copy: TableCopy, difference: TypeDifference, value: sql.Composable) -> sql.Composed:
    """``value`` (legacy type) converted as the copy converts it, then back into the legacy type."""
    if copy.legacy_timezone is not None and difference.column in zoned_columns(copy):
        return copy.in_legacy_zone(copy.in_legacy_zone(value))
    return sql.SQL("CAST(CAST({v} AS {target}) AS {legacy})").format(
        v=value, target=sql.SQL(difference.target_type), legacy=sql.SQL(difference.legacy_type)
    )


def _changed_by_conversion(copy: TableCopy, difference: TypeDifference, value: sql.Composable) -> sql.Composed:
    """True where the target column cannot hold ``value`` exactly (a cast that raises aside).

    A value is exact when converting it and back gives the same legacy value: by the legacy type's
    equality where equal values are identical (see :func:`catalog.hashed_by_value`), else by the text
    (numeric 2.0 into bigint comes back as 2: the scale is lost). ``json`` into ``jsonb`` is the
    exception: jsonb rewrites the spelling of every object (so the text would never compare), and
    what it loses is the duplicate keys of an object (it keeps the last).
    """
    if difference.legacy_type_oid == JSON_OID and difference.target_type_oid == JSONB_OID:
        # CAST ... IS NULL is never true; it makes a value jsonb refuses (\u0000) raise here.
        return sql.SQL("(CAST({v} AS jsonb) IS NULL OR {dup})").format(v=value, dup=_duplicate_keys(value))
    legacy = {c.name: c for c in copy.schema_catalog.columns(copy.source_schema, copy.source_table)}[difference.column]
    back = _round_trip(copy, difference, value)
    if catalog.hashed_by_value(legacy.type_oid, legacy.collation_oid):
        return sql.SQL("({} IS DISTINCT FROM {})").format(back, value)
    return sql.SQL('(({})::text COLLATE "C" IS DISTINCT FROM ({})::text COLLATE "C")').format(back, value)


def _duplicate_keys(value: sql.Composable) -> sql.Composed:
    """Whether a json value holds an object with the same key twice, at any depth."""
    return sql.SQL(
        "EXISTS (WITH RECURSIVE node(j) AS (SELECT {v} UNION ALL SELECT c.value FROM node CROSS JOIN LATERAL "
        "(SELECT e.value FROM json_each(CASE WHEN json_typeof(node.j) = 'object' THEN node.j END) e "
        "UNION ALL SELECT a.value FROM json_array_elements(CASE WHEN json_typeof(node.j) = 'array' THEN node.j END) a"
        ") c) SELECT FROM node WHERE json_typeof(node.j) = 'object' "
        "AND (SELECT count(*) <> count(DISTINCT k) FROM json_object_keys(node.j) k))"
    ).format(v=value)


SAMPLE_KEYS = 5


def _inexact_rows(copy: TableCopy, difference: TypeDifference) -> tuple[int, list[str]]:
    """Rows whose ``difference.column`` the target cannot hold exactly, and the first few keys: one query.

    Set-based first; a cast that raises (a value out of the target's range, text jsonb refuses, a
    numeric NaN or infinity into an integer: "cannot convert", SQLSTATE 0A000) aborts that query, so it
    runs in a savepoint and, if it raised, again through a function that catches the error value by value
    (made for this column in pg_temp and dropped after).
    """
    column = sql.SQL("s.{}").format(sql.Identifier(difference.column))
    keys = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in copy.key)
    query = sql.SQL(
        "SELECT count(*), (array_agg({key}::text ORDER BY {keys}))[1:%s] FROM {src} s WHERE {c} IS NOT NULL AND {bad}"
    )

    def rows_where(bad: sql.Composable) -> tuple[Any, ...] | None:
        statement = query.format(key=copy.key_row(), keys=keys, src=copy.source_rows, c=column, bad=bad)
        return db.fetchone(statement, [SAMPLE_KEYS])

    try:
        with transaction.atomic():
            row = rows_where(_changed_by_conversion(copy, difference, column))
    except (DataError, NotSupportedError, psycopg.errors.DataException, psycopg.errors.FeatureNotSupported):
        with transaction.atomic():
            function = sql.Identifier("pg_temp", "migrator_inexact_value")
            body = sql.SQL(
                "BEGIN RETURN {bad}; EXCEPTION WHEN data_exception OR feature_not_supported THEN RETURN true; END"
            ).format(bad=_changed_by_conversion(copy, difference, sql.SQL("v")))
            db.execute(
                sql.SQL("CREATE FUNCTION {f}(v {t}) RETURNS boolean LANGUAGE plpgsql AS {body}").format(
                    f=function, t=sql.SQL(difference.legacy_type), body=sql.Literal(db.render(body))
                )
            )
            row = rows_where(sql.SQL("{f}({c})").format(f=function, c=column))
            db.execute(sql.SQL("DROP FUNCTION {f}({t})").format(f=function, t=sql.SQL(difference.legacy_type)))
    count, keys_found = row or (0, [])
    return int(count), list(keys_found or [])


def inexact_condition(copy: TableCopy, alias: str = "s") -> tuple[sql.Composable, list[TypeDifference]] | None:
    """The condition that a legacy row (as ``alias``) holds a value its target column cannot hold exactly,
    and the columns it looks at; None when every converted column is provably exact. A value whose cast
    raises makes the condition raise that error."""
    checked = [d for d in type_differences(copy) if not _provably_exact(d)]
    if not checked:
        return None
    conditions = []
    for difference in checked:
        column = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(difference.column))
        bad = _changed_by_conversion(copy, difference, column)
        conditions.append(sql.SQL("({c} IS NOT NULL AND {bad})").format(c=column, bad=bad))
    return sql.SQL(" OR ").join(conditions), checked


def inexact_values(copy: TableCopy, difference: TypeDifference) -> tuple[int, list[str]]:
    """Rows whose ``difference.column`` the target type cannot hold exactly, and some keys (none when the
    catalog proves the conversion exact). Reads the source only: phase 1 asks before any target exists."""
    if _provably_exact(difference):
        return 0, []
    return _inexact_rows(copy, difference)


def refuse_inexact_conversions(copy: TableCopy) -> list[TypeDifference]:
    """Refuse, before anything is copied, a table with a value its target column cannot hold exactly.

    Every converted column is checked (one query each) and all of them are named in one line; a
    value is never rounded, cut or rewritten by the copy. Returns the columns of another type.
    """
    differences = type_differences(copy)
    problems = []
    for difference in differences:
        if _provably_exact(difference):
            continue
        count, keys = _inexact_rows(copy, difference)
        if count:
            what = (
                "objects with a key twice (jsonb keeps only the last)"
                if (difference.legacy_type_oid, difference.target_type_oid) == (JSON_OID, JSONB_OID)
                else "values it cannot hold exactly (they would be rounded, cut, shifted or out of range)"
            )
            problems.append(
                f"{copy.source_schema}.{copy.source_table}.{difference.column} ({difference.legacy_type}) has "
                f"{count} rows of {what} for {copy.target_schema}.{copy.target_table}.{difference.column} "
                f"({difference.target_type}), e.g. {'/'.join(copy.key)} {', '.join(keys)}"
            )
    if problems:
        raise MigrationError(
            "; ".join(problems) + "; nothing was copied: correct those rows in the legacy table (or change the "
            "target column's type to one that holds them), then rerun the phase"
        )
    return differences
