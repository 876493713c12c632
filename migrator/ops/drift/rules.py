"""How each difference between a tenant's legacy tables and the expected shape is classified: carried,
decided by an option, needing a decision, or refused (see docs/drift.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from psycopg import sql

from migrator import db
from migrator.models import Disposition, FindingKind
from migrator.ops.conversions import inexact_values
from migrator.ops.dependents import Dependent, carried, dependents_of, left_by_option, option_name
from migrator.ops.drift.catalog import (
    ExpectedColumn,
    ExpectedTable,
    Relation,
    count_rows,
    expected_tables,
    read_details,
    read_sequences,
    relations_of,
)
from migrator.ops.drift.findings import SCHEMAS_PER_QUERY, Decisions, Finding
from migrator.ops.table_copy import TIMESTAMP_OID, TIMESTAMPTZ_OID, TableCopy, TypeDifference
from migrator.tables import LEGACY_TENANT_TABLES, tenant_table_names

# --- classification ---------------------------------------------------------------------------------


def inspect_schemas(
    schemas: list[str], decisions: Decisions | None = None, progress: Callable[[int, int], None] | None = None
) -> Iterator[tuple[str, list[Finding]]]:
    """Each schema of ``schemas`` with its findings, ``SCHEMAS_PER_QUERY`` schemas' catalog at a time."""
    decisions = decisions or Decisions()
    for start in range(0, len(schemas), SCHEMAS_PER_QUERY):
        chunk = schemas[start : start + SCHEMAS_PER_QUERY]
        relations = relations_of(chunk)
        by_schema: dict[str, list[Relation]] = {schema: [] for schema in chunk}
        for relation in relations:
            by_schema[relation.schema].append(relation)
        wanted = [r for r in relations if _is_legacy_candidate(r)]
        read_details(wanted)
        sequences = read_sequences(wanted)
        for relation in wanted:
            relation.sequence = sequences.get(relation.oid)
        legacy = {r.oid: (r.schema, r.name) for r in wanted if r.name in LEGACY_TENANT_TABLES}
        found: dict[str, list[Dependent]] = {schema: [] for schema in chunk}
        for dependent in dependents_of(legacy, all_legacy=[r.oid for r in wanted]):
            found[dependent.schema].append(dependent)
        for schema in chunk:
            findings = _classify_schema(schema, by_schema[schema], decisions)
            yield schema, findings + [dependent_finding(d, decisions) for d in found[schema]]
        if progress is not None:
            progress(min(start + SCHEMAS_PER_QUERY, len(schemas)), len(schemas))


def _is_legacy_candidate(relation: Relation) -> bool:
    """A table the inspection reads the columns of: a legacy table, a case variant of one, an inheritance child."""
    return not relation.is_partition and (
        relation.name.lower().strip() in LEGACY_TENANT_TABLES or relation.parent is not None
    )


def _classify_schema(schema: str, relations: list[Relation], decisions: Decisions) -> list[Finding]:
    if schema in decisions.skip_schemas:
        findings = _classify_tables(schema, relations, decisions)
        return [
            Finding(
                f.schema,
                f.table,
                f.kind,
                f.object_name,
                f.detail,
                Disposition.DECIDED,
                "tenant left out",
                "--skip-schema",
            )
            if f.blocks
            else f
            for f in findings
        ]
    return _classify_tables(schema, relations, decisions)


def _classify_tables(schema: str, relations: list[Relation], decisions: Decisions) -> list[Finding]:
    findings: list[Finding] = []
    named = {r.name: r for r in relations if not r.is_partition}
    targets = set(tenant_table_names())
    expected = expected_tables()
    accounted: set[str] = set()
    for table, shape in expected.items():
        relation = named.get(table)
        variants = [r for r in named.values() if r.name != table and r.name.lower().strip() == table]
        for variant in variants:
            accounted.add(variant.name)
            findings.append(_name_variant(schema, table, variant, relation is not None, decisions))
            renamed_to = decisions.rename_tables.get((schema, variant.name))
            if relation is None and renamed_to == table:
                relation = variant  # inspected as the table it will be renamed to
        if relation is None:
            if not variants:
                findings.append(
                    Finding(schema, table, FindingKind.MISSING_TABLE, "", "", Disposition.CARRIED, "nothing to copy")
                )
            continue
        accounted.add(relation.name)
        findings += _table_findings(schema, table, relation, shape, decisions, relations)
    for relation in named.values():
        if relation.name in accounted or relation.name in targets:
            continue
        if relation.parent is not None and relation.parent in accounted:
            continue  # an inheritance child: reported with its parent
        findings += _unknown_table(schema, relation, decisions)
    return findings


def _name_variant(schema: str, table: str, variant: Relation, original_exists: bool, decisions: Decisions) -> Finding:
    option = f"--rename-table {schema}.{variant.name}={table}"
    detail = f"{variant.name!r} beside {table!r}" if original_exists else f"{variant.name!r} stands for {table!r}?"
    if decisions.rename_tables.get((schema, variant.name)) == table and not original_exists:
        disposition, action, decided_by = (
            Disposition.DECIDED,
            f"renamed to {table} in phase 1, then migrated as {table}",
            option,
        )
    elif decisions.leaves_table(schema, variant.name):
        disposition, action, decided_by = Disposition.DECIDED, "left in place, not migrated", "--leave-table"
    else:
        remedy = f"pass {option} to migrate it as {table}" if not original_exists else "merge it into the legacy table"
        disposition, decided_by = Disposition.DECISION, ""
        action = f"{remedy}, --leave-table {schema}.{variant.name} to leave it in place, or --skip-schema {schema}"
    return Finding(schema, variant.name, FindingKind.NAME_CASE, "", detail, disposition, action, decided_by)


def _unknown_table(schema: str, relation: Relation, decisions: Decisions) -> list[Finding]:
    rows = count_rows(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, relation.name)))
    if rows == 0:
        return []
    if decisions.leaves_table(schema, relation.name):
        disposition, action, decided_by = Disposition.DECIDED, "left in place, untouched, not migrated", "--leave-table"
    else:
        disposition, decided_by = Disposition.DECISION, ""
        action = (
            f"its rows are not migrated: --leave-table {schema}.{relation.name} to leave it in place, "
            f"or --skip-schema {schema}"
        )
    detail = f"{rows} rows; the registry does not know it"
    return [Finding(schema, relation.name, FindingKind.UNKNOWN_TABLE, "", detail, disposition, action, decided_by)]


def _table_findings(
    schema: str, table: str, relation: Relation, shape: ExpectedTable, decisions: Decisions, relations: list[Relation]
) -> list[Finding]:
    findings: list[Finding] = []
    name = relation.name
    table_ident = sql.Identifier(schema, name)

    def add(kind: FindingKind, obj: str, detail: str, disposition: Disposition, action: str, by: str = "") -> None:
        findings.append(Finding(schema, table, kind, obj, detail, disposition, action, by))

    if relation.relkind == "p":
        parts = ", ".join(relation.partitions) or "no partitions"
        add(FindingKind.PARTITIONED, "", f"partitions: {parts}", Disposition.CARRIED, "copied from all partitions")
    if relation.unlogged:
        add(FindingKind.UNLOGGED, "", "UNLOGGED", Disposition.CARRIED, "copied into a logged (crash-safe) table")
    for child in (r for r in relations if r.parent == name and not r.is_partition):
        rows = count_rows(sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, child.name)))
        extra = [c["name"] for c in child.columns if c["name"] not in {p["name"] for p in relation.columns}]
        detail = f"{child.name}: {rows} rows" + (f", extra columns {', '.join(extra)}" if extra else "")
        if rows == 0 and not extra:
            add(FindingKind.INHERITED, child.name, detail, Disposition.CARRIED, "empty child: nothing to copy")
        else:
            add(
                FindingKind.INHERITED,
                child.name,
                detail,
                Disposition.REFUSED,
                f"only {table}'s own rows are copied: move the child's rows into {table} (and drop the child) "
                f"or --skip-schema {schema}",
            )
    legacy_columns = {c["name"]: c for c in relation.columns}
    for column in relation.columns:
        if column["name"] not in shape.columns:
            add(
                FindingKind.EXTRA_COLUMN,
                column["name"],
                column["type"],
                Disposition.REFUSED,
                "no target column: add it to the target model, drop it from the legacy table deliberately, "
                f"or --skip-schema {schema}",
            )
    for expected in shape.columns.values():
        legacy_column = legacy_columns.get(expected.name)
        if legacy_column is None:
            add(
                FindingKind.MISSING_COLUMN,
                expected.name,
                f"{expected.data_type} expected",
                Disposition.REFUSED,
                f"add the column to {schema}.{name} (NULL or the value the application assumes) "
                f"or --skip-schema {schema}",
            )
            continue
        findings += _column_findings(schema, table, table_ident, legacy_column, expected, shape, decisions)
    findings += _constraint_findings(schema, table, relation, shape, decisions)
    findings += _sequence_findings(schema, table, relation, shape)
    return findings


def _column_findings(
    schema: str,
    table: str,
    table_ident: sql.Identifier,
    column: dict[str, Any],
    expected: ExpectedColumn,
    shape: ExpectedTable,
    decisions: Decisions,
) -> list[Finding]:
    findings: list[Finding] = []
    name = column["name"]

    def add(kind: FindingKind, detail: str, disposition: Disposition, action: str) -> None:
        findings.append(Finding(schema, table, kind, name, detail, disposition, action))

    if name in shape.remapped:  # ids of the legacy reference table, replaced by shared ids
        legacy_type_ok = column["type"] in ("bigint", "integer", "smallint")
    else:
        legacy_type_ok = column["type"] == expected.data_type
    if column["typtype"] == "e":
        add(FindingKind.ENUM, f"{column['type']} -> {expected.data_type}", Disposition.CARRIED, "copied as its label")
    elif column["typtype"] == "d":
        if column["domain_checks"]:
            add(
                FindingKind.DOMAIN,
                f"{column['type']} with {column['domain_checks']} CHECK constraint(s) -> {expected.data_type}",
                Disposition.DECISION,
                "the new column does not enforce the domain's checks: "
                f"--leave-constraint {schema}.{table}.{column['type']} to accept that, or --skip-schema {schema}",
            )
        else:
            add(FindingKind.DOMAIN, f"{column['type']} -> {expected.data_type}", Disposition.CARRIED, "copied as is")
    elif not legacy_type_ok:
        findings.append(_type_finding(schema, table, column, expected, shape, decisions))
    if column["nullable"] and not expected.nullable:
        nulls = count_rows(
            sql.SQL("SELECT count(*) FROM ONLY {t} WHERE {c} IS NULL").format(t=table_ident, c=sql.Identifier(name))
        )
        if nulls:
            add(
                FindingKind.NULLABILITY,
                f"{nulls} NULLs; the target column is NOT NULL",
                Disposition.REFUSED,
                f"set a value in those rows of the legacy table or --skip-schema {schema}",
            )
        else:
            add(FindingKind.NULLABILITY, "nullable, no NULLs", Disposition.CARRIED, "the target column is NOT NULL")
    elif not column["nullable"] and expected.nullable:
        add(
            FindingKind.NULLABILITY,
            "NOT NULL in the legacy table",
            Disposition.CARRIED,
            "the target column allows NULL",
        )
    if column["generated"]:
        add(FindingKind.GENERATED, "generated column", Disposition.CARRIED, "its values are copied into a plain column")
    elif column["default"] is not None and not column["identity"] and "nextval(" not in column["default"]:
        add(
            FindingKind.DEFAULT,
            f"DEFAULT {column['default']}",
            Disposition.CARRIED,
            "rows keep their values; new rows get the target's default (none: the application sets it)",
        )
    if column["collation"]:
        add(
            FindingKind.COLLATION,
            f"COLLATE {column['collation']}",
            Disposition.CARRIED,
            "values copied byte for byte; the new column compares and sorts by the database's default collation",
        )
    return findings


def _type_finding(
    schema: str,
    table: str,
    column: dict[str, Any],
    expected: ExpectedColumn,
    shape: ExpectedTable,
    decisions: Decisions,
) -> Finding:
    """A column of another type than its target: carried when every value converts exactly (checked now, one
    query, and again before the copy), refused with counts and example keys otherwise."""
    name = column["name"]
    target_oid = int(db.fetchvalue("SELECT to_regtype(%s)::oid::bigint", [expected.data_type]) or 0)
    difference = TypeDifference(name, column["type"], expected.data_type, column["type_oid"], target_oid)
    zone, source = decisions.legacy_timezone
    zoned = (column["type_oid"], target_oid) == (TIMESTAMP_OID, TIMESTAMPTZ_OID)
    copy = TableCopy(schema, table, schema, table, (name,), key=shape.key, legacy_timezone=zone if zoned else None)
    detail = f"{column['type']} in the legacy table, {expected.data_type} in the target"
    if zoned:
        detail += f"; read as wall-clock times of {zone} ({source})"
    if str(column["type"]).startswith("character(") and not expected.data_type.startswith("character("):
        # char(n) compares without its padding, so the value is exact; what an application reads is not
        detail += "; the blanks char(n) pads its values with are not carried (they compare equal without them)"
    rows, keys = inexact_values(copy, difference)
    if rows:
        return Finding(
            schema,
            table,
            FindingKind.TYPE,
            name,
            f"{detail}; {rows} rows it cannot hold exactly, e.g. {'/'.join(shape.key)} {', '.join(keys)}",
            Disposition.REFUSED,
            f"correct those rows in the legacy table (never rounded or cut), or --skip-schema {schema}",
        )
    return Finding(
        schema,
        table,
        FindingKind.TYPE,
        name,
        detail,
        Disposition.CARRIED,
        "every value converts exactly (checked again before the copy)",
    )


_CONSTRAINT_WORD = {"c": "CHECK", "u": "UNIQUE", "x": "EXCLUDE", "f": "FOREIGN KEY", "p": "PRIMARY KEY"}


def _constraint_findings(
    schema: str, table: str, relation: Relation, shape: ExpectedTable, decisions: Decisions
) -> list[Finding]:
    findings: list[Finding] = []

    def add(kind: FindingKind, obj: str, detail: str, disposition: Disposition, action: str, by: str = "") -> None:
        findings.append(Finding(schema, table, kind, obj, detail, disposition, action, by))

    left_option = "--leave-constraint"
    primary = next((c for c in relation.constraints if c["type"] == "p"), None)
    if primary is None or tuple(primary["columns"]) != shape.key:
        detail = f"PRIMARY KEY ({', '.join(primary['columns'])})" if primary else "no primary key"
        duplicates = count_rows(
            sql.SQL("SELECT count(*) FROM (SELECT {k} FROM ONLY {t} GROUP BY {k} HAVING count(*) > 1) d").format(
                k=db.ident_list(shape.key), t=sql.Identifier(schema, relation.name)
            )
        )
        if duplicates:
            add(
                FindingKind.PRIMARY_KEY,
                ", ".join(shape.key),
                f"{detail}; {duplicates} duplicated keys",
                Disposition.REFUSED,
                f"make ({', '.join(shape.key)}) unique in the legacy table or --skip-schema {schema}",
            )
        else:
            add(
                FindingKind.PRIMARY_KEY,
                ", ".join(shape.key),
                f"{detail}; keys are unique",
                Disposition.CARRIED,
                f"the new table's primary key is ({', '.join(shape.key)})",
            )
    for constraint in relation.constraints:
        kind, columns = constraint["type"], tuple(constraint["columns"])
        if kind == "p" or (kind == "u" and columns in shape.unique):
            continue
        if kind == "f" and len(columns) == 1 and columns[0] in shape.foreign_keys:
            continue
        detail = constraint["definition"]
        if decisions.leaves_constraint(schema, table, constraint["name"]):
            add(
                FindingKind.CONSTRAINT,
                constraint["name"],
                detail,
                Disposition.DECIDED,
                "left behind: the new table does not enforce it",
                left_option,
            )
        elif kind == "f":
            add(
                FindingKind.CONSTRAINT,
                constraint["name"],
                detail,
                Disposition.DECISION,
                "the target layout has no such foreign key: "
                f"{left_option} {schema}.{table}.{constraint['name']} to leave it behind, or --skip-schema {schema}",
            )
        else:
            add(
                FindingKind.CONSTRAINT,
                constraint["name"],
                f"{_CONSTRAINT_WORD[kind]}: {detail}",
                Disposition.CARRIED,
                "re-created on the new table and validated",
            )
    for index in relation.indexes:
        indexed = tuple(index["columns"]) if index["columns"] is not None else None
        if index["constraint"]:
            continue  # a primary key, unique or exclusion constraint's own index: reported above
        if (
            not index["partial"]
            and columns is not None
            and columns in shape.indexed
            and (not index["unique"] or indexed in shape.unique)
        ):
            continue
        if decisions.leaves_constraint(schema, table, index["name"]):
            add(
                FindingKind.INDEX,
                index["name"],
                index["definition"],
                Disposition.DECIDED,
                "left behind: not created on the new table",
                left_option,
            )
        elif index["unique"]:
            add(
                FindingKind.INDEX,
                index["name"],
                index["definition"],
                Disposition.CARRIED,
                "re-created on the new table (enforces the same uniqueness)",
            )
        else:
            add(
                FindingKind.INDEX,
                index["name"],
                index["definition"],
                Disposition.DECISION,
                "a performance index the new table does not have (not re-created): "
                f"{left_option} {schema}.{table}.{index['name']} to accept that, or create it on the new table "
                "after phase 3",
            )
    return findings


BIGINT_MAX = 2**63 - 1
# The new tables' ids (and, online, both sides' in one id space) continue after the highest id: a row written
# near the end of bigint by hand would leave them a handful, or none.
ID_HEADROOM = 1_000_000_000


def _sequence_findings(schema: str, table: str, relation: Relation, shape: ExpectedTable) -> list[Finding]:
    if shape.key != ("id",) or "id" not in {c["name"] for c in relation.columns}:
        return []
    facts = relation.sequence
    if facts is None:
        return []
    findings = []

    def add(kind: FindingKind, detail: str, disposition: Disposition, action: str) -> None:
        findings.append(Finding(schema, table, kind, facts.name, detail, disposition, action))

    if facts.max_id is not None and BIGINT_MAX - facts.max_id < ID_HEADROOM:
        add(
            FindingKind.SEQUENCE,
            f"max(id) {facts.max_id} (issued up to {facts.last_value}) leaves the new table's sequence, which "
            f"continues after the highest id, {BIGINT_MAX - facts.max_id} ids",
            Disposition.REFUSED,
            f"give that row an id below {BIGINT_MAX - ID_HEADROOM} (its sequence never issued it), or "
            f"--skip-schema {schema}",
        )
    if facts.last_value is not None and facts.last_value > (facts.max_id or 0):
        add(
            FindingKind.SEQUENCE,
            f"issued up to {facts.last_value}, max(id) {facts.max_id}",
            Disposition.CARRIED,
            f"the new table's ids continue after {facts.last_value}",
        )
    if facts.shared_with:
        add(
            FindingKind.SHARED_SEQUENCE,
            f"also the default of {', '.join(facts.shared_with)}",
            Disposition.CARRIED,
            "the new table gets its own sequence, continuing after the shared one's last value",
        )
    return findings


def dependent_finding(dependent: Dependent, decisions: Decisions) -> Finding:
    """An object that depends on a legacy table: carried to the new table at cutover, left with the archived
    table on the operator's word, or waiting for that decision."""
    kind, name, detail, decided_by = dependent.kind, dependent.name, dependent.detail, ""
    # The operator's word first, as cutover takes it (dependents.carry): a carried kind named by
    # --leave-dependent stays with the archived table too, and the report must say so.
    if left_by_option(dependent, decisions.leave_dependents):
        disposition, decided_by = Disposition.DECIDED, "--leave-dependent"
        action = "stays with the archived legacy table at cutover"
    elif carried(dependent):
        disposition = Disposition.CARRIED
        action = (
            "nothing to do: the new table is published too"
            if kind == FindingKind.PUBLICATION
            else "re-created on the new table at cutover"
        )
    else:
        disposition, detail = Disposition.DECISION, detail[:200]
        action = (
            "cutover does not carry it: after cutover it would act on the archived legacy table; drop it (and "
            f"re-create it over the new tables after cutover), or --leave-dependent '{option_name(dependent)}'"
        )
    return Finding(dependent.schema, dependent.table, kind, name, detail, disposition, action, decided_by)
