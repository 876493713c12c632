"""The legacy table's own rules carried to the tenant's new table: CHECK, UNIQUE and EXCLUDE constraints
and unique indexes that the new table has no equivalent of.

Django builds the new table from the model, so a rule one tenant added to its legacy table by hand
(``CHECK (email LIKE '%@%')``, a unique index on ``lower(email)``) would be silently lost and the new
table would accept rows the legacy one refused. Phase 3 re-creates each such rule on the new table
after the copy, in one transaction (all of a table's rules or none), enforced from then on: a CHECK is
added validated, a unique index is built over the copied rows.

Definitions come from the server's catalog (``pg_get_constraintdef``, ``pg_get_expr``,
``pg_get_indexdef`` per key column): expressions over the legacy column names, which the new table
keeps. Two objects are equivalent when these definitions are equal, so the new table's own indexes
and constraints (and the legacy primary key) are never duplicated, and a rerun finds what an earlier
attempt carried. A carried object is named after the legacy one: its name when free, else the name
with ``_carried`` (then ``_carried_2`` ...); an equivalent object holding one of these names is a
carried one (what a killed attempt committed before its step was recorded). The step's details are
the record (:func:`carried_objects`). Non-unique indexes are performance, not rules: they are
reported, not carried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import psycopg
from django.db import DatabaseError, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.core.details import CarriedDetails, CopyDetails, read_details
from migrator.core.errors import MigrationError
from migrator.ops.constraints import QUALIFY_ALL
from migrator.step_ref import StepRef

CHECK, UNIQUE_CONSTRAINT, EXCLUSION, UNIQUE_INDEX, INDEX, PRIMARY_KEY = (
    "check",
    "unique constraint",
    "exclusion constraint",
    "unique index",
    "index",
    "primary key",
)
# The kinds carried: the rules that refuse rows.
RULES = (CHECK, UNIQUE_CONSTRAINT, EXCLUSION, UNIQUE_INDEX)
PERFORMANCE_INDEX = "not carried: performance index"
INVALID_INDEX = "not carried: invalid in the legacy table (a failed CREATE INDEX CONCURRENTLY)"
CARRIED_SUFFIX = "_carried"
MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: a longer name would be cut by the server, then not found again

# What follows ``CREATE INDEX <name> ON <table>`` for the index ``x`` (pg_index) of access method ``am``,
# built from pg_index: each key column or expression with its collation, a non-default operator class
# and its order, the INCLUDE columns, NULLS NOT DISTINCT and the predicate.
_INDEX_DEFINITION = sql.SQL(
    """'USING ' || quote_ident(am.amname) || ' ('
    || (SELECT string_agg(
            CASE WHEN x.indkey[k - 1] = 0 THEN '(' || pg_get_indexdef(x.indexrelid, k, true) || ')'
                 ELSE pg_get_indexdef(x.indexrelid, k, true) END
            || coalesce((SELECT ' COLLATE ' || quote_ident(n.nspname) || '.' || quote_ident(co.collname)
                           FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace
                          WHERE co.oid = x.indcollation[k - 1]), '')
            || coalesce((SELECT ' ' || quote_ident(n.nspname) || '.' || quote_ident(oc.opcname)
                           FROM pg_opclass oc JOIN pg_namespace n ON n.oid = oc.opcnamespace
                          WHERE oc.oid = x.indclass[k - 1] AND NOT oc.opcdefault), '')
            || CASE WHEN x.indoption[k - 1] & 1 = 1
                         THEN ' DESC' || CASE WHEN x.indoption[k - 1] & 2 = 0 THEN ' NULLS LAST' ELSE '' END
                    WHEN x.indoption[k - 1] & 2 = 2 THEN ' NULLS FIRST' ELSE '' END,
            ', ' ORDER BY k)
          FROM generate_series(1, x.indnkeyatts) k)
    || ')'
    || coalesce((SELECT ' INCLUDE (' || string_agg(pg_get_indexdef(x.indexrelid, k, true), ', ' ORDER BY k) || ')'
                   FROM generate_series(x.indnkeyatts + 1, x.indnatts) k), '')
    || CASE WHEN x.indnullsnotdistinct THEN ' NULLS NOT DISTINCT' ELSE '' END
    || coalesce(' WHERE (' || pg_get_expr(x.indpred, x.indrelid, true) || ')', '')"""
)

BACKING_INDEX = "backing index"  # the index of a unique constraint or primary key

# One row per CHECK / UNIQUE / EXCLUDE / PRIMARY KEY constraint, per index that belongs to none of them,
# and per index behind a unique constraint or primary key (what a unique index is compared with), of
# the two tables: (legacy?, name, kind, constraint definition, CHECK expression, validated, index
# definition, index valid).
_OBJECTS = sql.SQL(
    """
    WITH rel(legacy, oid) AS (VALUES (true, {legacy}), (false, {target}))
    SELECT rel.legacy, c.conname,
           CASE c.contype WHEN 'c' THEN 'check' WHEN 'u' THEN 'unique constraint'
                WHEN 'x' THEN 'exclusion constraint' ELSE 'primary key' END,
           CASE WHEN c.contype = 'c' THEN 'CHECK (' || pg_get_expr(c.conbin, c.conrelid, true) || ')'
                    || CASE WHEN c.connoinherit THEN ' NO INHERIT' ELSE '' END
                ELSE pg_get_constraintdef(c.oid, true) END,
           CASE WHEN c.contype = 'c' THEN pg_get_expr(c.conbin, c.conrelid, true) END,
           c.convalidated, NULL::text, true
      FROM rel JOIN pg_constraint c ON c.conrelid = rel.oid
     WHERE c.contype IN ('c', 'u', 'x', 'p')
    UNION ALL
    SELECT rel.legacy, i.relname, CASE WHEN x.indisunique THEN 'unique index' ELSE 'index' END,
           NULL, NULL, true, {index_definition}, x.indisvalid
      FROM rel JOIN pg_index x ON x.indrelid = rel.oid
      JOIN pg_class i ON i.oid = x.indexrelid
      JOIN pg_am am ON am.oid = i.relam
     WHERE NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = x.indrelid AND c.conindid = x.indexrelid
                         AND c.contype IN ('u', 'x', 'p'))
    UNION ALL
    SELECT rel.legacy, c.conname, {backing}, NULL, NULL, true, {index_definition}, x.indisvalid
      FROM rel JOIN pg_constraint c ON c.conrelid = rel.oid AND c.contype IN ('u', 'p')
      JOIN pg_index x ON x.indexrelid = c.conindid
      JOIN pg_class i ON i.oid = x.indexrelid
      JOIN pg_am am ON am.oid = i.relam
    ORDER BY 1, 3, 2
    """
)


@dataclass(frozen=True)
class TableObject:
    """A constraint or index of one of the two tables, as the catalog defines it."""

    legacy: bool  # of the legacy table (else of the new one)
    name: str
    kind: str  # CHECK ... PRIMARY KEY, or BACKING_INDEX
    constraint_definition: str | None  # constraints: what follows ADD CONSTRAINT <name>
    check_expression: str | None  # CHECK: the expression (to count the rows that break it)
    validated: bool  # CHECK: convalidated (a NOT VALID legacy CHECK may have rows that break it)
    index_definition: str | None  # indexes: what follows CREATE INDEX <name> ON <table>
    valid: bool  # indexes: indisvalid

    @property
    def definition(self) -> str:
        return self.constraint_definition or self.index_definition or ""

    @property
    def unique_signature(self) -> str | None:
        """What a unique index, unique constraint or primary key enforces, comparable across the two."""
        if self.kind in (UNIQUE_INDEX, BACKING_INDEX) and self.index_definition:
            return self.index_definition
        return None

    def as_record(self) -> dict[str, str]:
        return {"legacy": self.name, "kind": self.kind, "definition": self.definition}


@dataclass
class CarryReport:
    """What :func:`carry_constraints` did with each of the legacy table's rules and indexes."""

    carried: list[dict[str, str]] = field(default_factory=list)
    left_behind: list[dict[str, str]] = field(default_factory=list)
    not_carried: list[dict[str, str]] = field(default_factory=list)

    def details(self) -> CarriedDetails:
        """The copy step's details: only what there is (most tables have none of it)."""
        details = CarriedDetails()
        if self.carried:
            details["constraints_carried"] = self.carried
        if self.left_behind:
            details["constraints_left_behind"] = self.left_behind
        if self.not_carried:
            details["constraints_not_carried"] = self.not_carried
        return details


LeavePattern = tuple[str, str, str]  # schema, legacy table, constraint or index name; fnmatch patterns


def left_behind(patterns: tuple[LeavePattern, ...], schema: str, table: str, name: str) -> bool:
    """Whether ``--leave-constraint`` names this object of ``schema.table``."""
    return any(fnmatchcase(schema, s) and fnmatchcase(table, t) and fnmatchcase(name, n) for s, t, n in patterns)


def table_objects(schema: str, legacy_table: str, target_table: str) -> list[TableObject]:
    query = _OBJECTS.format(
        legacy=catalog.RELATION_OID,
        target=catalog.RELATION_OID,
        index_definition=_INDEX_DEFINITION,
        backing=sql.Literal(BACKING_INDEX),
    )
    # Definitions rendered fully qualified, whatever the connection's search_path: comparable between
    # the two tables, and valid as written in any session.
    with transaction.atomic(), db.local_settings(**QUALIFY_ALL):
        rows = db.fetchall(query, [schema, legacy_table, schema, target_table])
    return [TableObject(*row) for row in rows]


def refuse_breaking_checks(schema: str, legacy_table: str, target_table: str, leave: tuple[LeavePattern, ...]) -> None:
    """Refuse, before anything is copied, a legacy CHECK added NOT VALID that legacy rows break: the new
    table would enforce it on every copied row, so the carry could never be validated."""
    with transaction.atomic(), db.local_settings(**QUALIFY_ALL):
        unvalidated = catalog.relation_rows(
            "SELECT conname, pg_get_expr(conbin, conrelid, true) FROM pg_constraint "
            "WHERE conrelid = {oid} AND contype = 'c' AND NOT convalidated ORDER BY conname",
            schema,
            legacy_table,
        )
    for name, expression in unvalidated:
        if left_behind(leave, schema, legacy_table, name):
            continue
        breaking = _rows_breaking(schema, legacy_table, expression)
        if breaking:
            raise MigrationError(
                f"{schema}.{legacy_table}: {breaking} rows break its CHECK constraint {name} ({expression}), "
                f"added NOT VALID, which {schema}.{target_table} would enforce; nothing was copied: fix those rows, "
                f"or pass --leave-constraint {schema}.{legacy_table}.{name} to leave the constraint behind"
            )


def _rows_breaking(schema: str, table: str, expression: str) -> int:
    # A CHECK passes when its expression is true or null: only false breaks it. The expression is the
    # server's own pg_get_expr output over the table's columns, not outside input.
    return int(
        db.fetchvalue(
            sql.SQL("SELECT count(*) FROM {} WHERE ({}) IS FALSE").format(
                sql.Identifier(schema, table), sql.SQL(expression)
            )
        )
    )


def candidate_names(legacy_name: str) -> list[str]:
    """The names a carried object may take, in order of preference (each at most 63 bytes)."""
    names = [legacy_name]
    for number in range(1, 10):
        suffix = CARRIED_SUFFIX if number == 1 else f"{CARRIED_SUFFIX}_{number}"
        names.append(_truncate(legacy_name, MAX_NAME_BYTES - len(suffix)) + suffix)
    return [_truncate(name, MAX_NAME_BYTES) for name in names]


def _truncate(name: str, max_bytes: int) -> str:
    encoded = name.encode()
    if len(encoded) <= max_bytes:
        return name
    return encoded[:max_bytes].decode(errors="ignore")  # never half a character


def _names_in_use(schema: str, target_table: str, names: list[str]) -> set[str]:
    """Of ``names``: those of a relation in the schema or of a constraint of the new table."""
    rows = db.fetchall(
        sql.SQL(
            "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(%s) AND relname = ANY(%s) "
            "UNION SELECT conname FROM pg_constraint WHERE conrelid = {target} AND conname = ANY(%s)"
        ).format(target=catalog.RELATION_OID),
        [schema, names, schema, target_table, names],
    )
    return {row[0] for row in rows}


def _equivalents(item: TableObject, targets: list[TableObject]) -> list[TableObject]:
    """The new table's objects that enforce what ``item`` does (for an index: that serve it)."""
    if item.kind in (CHECK, EXCLUSION):
        return [o for o in targets if o.kind == item.kind and o.constraint_definition == item.constraint_definition]
    if item.unique_signature is not None:
        return [o for o in targets if o.unique_signature == item.unique_signature]
    return [o for o in targets if o.index_definition is not None and o.index_definition == item.index_definition]


def _backing_signature(item: TableObject, objects: list[TableObject]) -> TableObject:
    """A legacy unique constraint compared by its index: a unique index on the same columns is the same rule."""
    if item.kind != UNIQUE_CONSTRAINT:
        return item
    backing = next((o for o in objects if o.legacy and o.kind == BACKING_INDEX and o.name == item.name), None)
    if backing is None:
        return item
    return TableObject(
        True, item.name, item.kind, item.constraint_definition, None, True, backing.index_definition, backing.valid
    )


def carry_constraints(
    schema: str, legacy_table: str, target_table: str, leave: tuple[LeavePattern, ...]
) -> CarryReport:
    """Re-create on ``schema.target_table`` each rule of ``schema.legacy_table`` it lacks; see the module.

    All of the table's rules are created in one transaction: rows that break one fail it with one line
    naming the rule and the option that leaves it behind, and nothing is left half done.
    """
    objects = table_objects(schema, legacy_table, target_table)
    targets = [o for o in objects if not o.legacy]
    report = CarryReport()
    to_create: list[TableObject] = []
    for item in objects:
        if not item.legacy or item.kind in (PRIMARY_KEY, BACKING_INDEX):
            continue  # the new table has its own primary key (on the same id)
        compared = _backing_signature(item, objects)
        equivalents = _equivalents(compared, targets)
        if item.kind == INDEX:
            if not equivalents:
                report.not_carried.append({**item.as_record(), "reason": PERFORMANCE_INDEX})
            continue
        if left_behind(leave, schema, legacy_table, item.name):
            report.left_behind.append(item.as_record())
            continue
        if not item.valid:
            report.not_carried.append({**item.as_record(), "reason": INVALID_INDEX})
            continue
        candidates = candidate_names(item.name)
        ours = next((o for o in equivalents if o.name in candidates), None)
        if ours is not None:  # carried by an earlier attempt
            report.carried.append({**item.as_record(), "target": ours.name})
        elif not equivalents:
            to_create.append(item)
    if to_create:
        _create(schema, legacy_table, target_table, to_create, report)
    return report


def _create(schema: str, legacy_table: str, target_table: str, items: list[TableObject], report: CarryReport) -> None:
    wanted = [name for item in items for name in candidate_names(item.name)]
    in_use = _names_in_use(schema, target_table, wanted)
    table = sql.Identifier(schema, target_table)
    current: TableObject | None = None
    created: list[dict[str, str]] = []
    try:
        with transaction.atomic():
            for item in items:
                current = item
                # A CHECK's name is the table's; a unique or exclusion constraint's is also its index's, a
                # relation of the schema (where the legacy table's index keeps the legacy name).
                name = next(n for n in candidate_names(item.name) if n not in in_use)
                in_use.add(name)
                # Definitions are the server's own catalog output (see the module), not outside input.
                if item.kind == UNIQUE_INDEX:
                    db.execute(
                        sql.SQL("CREATE UNIQUE INDEX {} ON {} {}").format(
                            sql.Identifier(name), table, sql.SQL(item.definition)
                        )
                    )
                else:
                    db.execute(
                        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                            table, sql.Identifier(name), sql.SQL(item.definition)
                        )
                    )
                created.append({**item.as_record(), "target": name})
    except (DatabaseError, psycopg.Error) as exc:
        if current is None:
            raise
        raise _break_error(schema, legacy_table, target_table, current, exc) from None
    report.carried += created


def _break_error(
    schema: str, legacy_table: str, target_table: str, item: TableObject, exc: Exception
) -> MigrationError:
    # Django's cursor wraps the psycopg error (its cause); a psycopg cursor raises it as it is.
    diag = getattr(exc if isinstance(exc, psycopg.Error) else exc.__cause__, "diag", None)
    reason = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0]
    detail = getattr(diag, "message_detail", None)
    breaking = ""
    if item.kind == CHECK and item.check_expression:
        breaking = f"{_rows_breaking(schema, target_table, item.check_expression)} copied rows break it: "
    return MigrationError(
        " ".join(
            f"{schema}.{target_table}: the {item.kind} {item.name} of {schema}.{legacy_table} ({item.definition}) "
            f"cannot be carried: {breaking}{reason}{f' ({detail})' if detail else ''}; nothing was carried: fix "
            f"those rows in {schema}.{legacy_table} and run `migrate_phase data` again, or pass --leave-constraint "
            f"{schema}.{legacy_table}.{item.name} to leave it behind".split()
        )
    )


def carried_objects(tenant_id: str, copy_step: StepRef) -> list[dict[str, str]]:
    """The objects phase 3 carried to the tenant's new tables, from its completed copy steps' (``copy_step``) details:
    each with ``table`` (the new table), ``target`` (its name there), ``legacy``, ``kind``, ``definition``.

    These are the tenant's own additions to the structure Django expects, known and intended."""
    from migrator.models import MigrationRecord, Status, of_steps

    steps = (
        MigrationRecord.objects.latest_attempts()
        .filter(of_steps(copy_step), tenant_id=tenant_id, status=Status.COMPLETED)
        .order_by("target")
        .values_list("target", "details")
    )
    return [
        {"table": target, **item}
        for target, details in steps
        for item in read_details(CopyDetails, details).get("constraints_carried", [])
    ]
