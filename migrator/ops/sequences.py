"""Id sequences: a new table's continued past every id its legacy sequence ever issued (phase 3), and the
one id space of both sides of a two-way sync (odd and even ids until one side is the survivor)."""

from __future__ import annotations

from psycopg import sql

from migrator import catalog, db
from migrator.core.details import SequenceDetails


def last_issued(sequence: tuple[str, str] | None) -> tuple[sql.Composable, list[str]]:
    """An expression for the highest value ``sequence`` has issued, with its parameters: its last value
    once called; before that (new, or set with ``setval(..., false)``) the value before the one it
    would issue next; for a descending sequence, its start. NULL for no sequence."""
    if sequence is None:
        return sql.SQL("NULL::bigint"), []
    return (
        sql.SQL(
            "(SELECT CASE WHEN q.seqincrement < 0 THEN q.seqstart WHEN s.is_called THEN s.last_value "
            "ELSE s.last_value - q.seqincrement END FROM {seq} s, pg_sequence q WHERE q.seqrelid = {oid})"
        ).format(seq=sql.Identifier(*sequence), oid=catalog.RELATION_OID),
        list(sequence),
    )


def continue_sequence(
    schema: str, table: str, column: str = "id", legacy: tuple[str, str] | None = None
) -> SequenceDetails:
    """Make the sequence feeding ``schema.table.column`` continue after every id ever issued for it.

    That is the greatest of: the table's highest id; what its own sequence issued already (it never
    moves back); and, for a table whose rows keep their legacy ids, what the sequence of the legacy
    table ``legacy`` (same column) issued: rows deleted from the legacy table took their ids with them,
    but those ids were issued once and may be known elsewhere. A legacy sequence shared by several
    tables counts whole. Returns what was used, for the step's details; nothing when no sequence
    feeds the column.
    """
    sequence = catalog.column_sequence(schema, table, column)
    if sequence is None:
        return {}
    legacy_sequence = catalog.column_sequence(*legacy, column) if legacy else None
    own, own_params = last_issued(sequence)
    legacy_last, legacy_params = last_issued(legacy_sequence)
    legacy_value, after = db.fetchone(
        sql.SQL(
            "SELECT legacy_last, setval({oid}, greatest(highest_id, own_last, legacy_last, 0) + 1, false) - 1 "
            "FROM (SELECT (SELECT max({c}) FROM {t}) AS highest_id, {own} AS own_last, {legacy} AS legacy_last) x"
        ).format(
            oid=catalog.RELATION_OID,
            c=sql.Identifier(column),
            t=sql.Identifier(schema, table),
            own=own,
            legacy=legacy_last,
        ),
        [*sequence, *own_params, *legacy_params],
    ) or (None, 0)
    details = SequenceDetails(sequence_continues_after=after)
    if legacy is not None:
        details["legacy_sequence_last_value"] = legacy_value
    return details


# ``vacuumdb --analyze-in-stages`` starts with targets 1 and 10: usable plans at once, for a sample of
# 300 x target rows instead of 30,000. On a 50k-row table that is 12 ms instead of 150 ms, the whole
# sample being sorted per column (text and jsonb comparisons dominate).


# --- one id space for both sides of a two-way sync ------------------------------------------


def _highest_issued(sides: list[tuple[str, str]], sequences: list[tuple[str, str]], column: str) -> int:
    parts: list[sql.Composable] = [
        sql.SQL("(SELECT max({}) FROM {})").format(sql.Identifier(column), sql.Identifier(*t)) for t in sides
    ]
    params: list[str] = []
    for sequence in sequences:
        expression, names = last_issued(sequence)
        parts.append(expression)
        params += names
    return int(db.fetchvalue(sql.SQL("SELECT greatest(0, {})").format(sql.SQL(", ").join(parts)), params) or 0)


def interleave_sequences(legacy: tuple[str, str], new: tuple[str, str], column: str = "id") -> dict[str, int] | None:
    """Both sides' sequences issue ids past every id either side issued, the legacy one odd, the new one
    even, each stepping by 2: no id is ever issued twice, whichever side a row is inserted on."""
    legacy_sequence = catalog.column_sequence(*legacy, column)
    new_sequence = catalog.column_sequence(*new, column)
    if legacy_sequence is None or new_sequence is None:
        return None
    highest = _highest_issued([legacy, new], [legacy_sequence, new_sequence], column)
    odd = highest + 1 if (highest + 1) % 2 else highest + 2
    for sequence, start in ((legacy_sequence, odd), (new_sequence, odd + 1)):
        db.execute(
            sql.SQL("ALTER SEQUENCE {} INCREMENT BY 2 RESTART WITH {}").format(
                sql.Identifier(*sequence), sql.Literal(start)
            )
        )
    return {"ids_issued_before": highest, "legacy_next": odd, "new_next": odd + 1}


def single_sequence(survivor: tuple[str, str], other: tuple[str, str], column: str = "id") -> int | None:
    """The surviving side's sequence back to steps of 1, past every id either side issued."""
    sequence = catalog.column_sequence(*survivor, column)
    if sequence is None:
        return None
    sides = [survivor] + ([other] if catalog.table_exists(*other) else [])
    other_sequence = catalog.column_sequence(*other, column) if catalog.table_exists(*other) else None
    highest = _highest_issued(sides, [sequence] + ([other_sequence] if other_sequence else []), column)
    db.execute(
        sql.SQL("ALTER SEQUENCE {} INCREMENT BY 1 RESTART WITH {}").format(
            sql.Identifier(*sequence), sql.Literal(highest + 1)
        )
    )
    return highest + 1
