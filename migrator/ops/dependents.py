"""Objects that depend on legacy tables: what a view, a foreign key of another service or a publication
reads or references, and what PostgreSQL would carry along (or drop with CASCADE) when a table moves.

PostgreSQL ties most of them to a table by its oid (``pg_depend``, ``pg_rewrite``, the catalogs of
triggers, policies, publications, statistics), so they follow the table into the archive schema at
cutover: a view would read the archived, frozen rows. Grants and comments live on the table itself.
Functions whose body is text (plpgsql, SQL without a standard body) are tied by nothing: they are
found by the table's name in their source (``found by name``), which can match more than it should.

Phase 1 lists them (:func:`dependents_of`, in the drift report); cutover carries the ones it can to
the new tables (:func:`carry`, in the transaction that archives the tenant) and refuses the tenant
while any other is undecided (:func:`refuse_uncarried`). See docs/drift.md for each kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from psycopg import sql

from migrator import db
from migrator.core.errors import MigrationError
from migrator.models import FindingKind
from migrator.ops import capture, twoway
from migrator.tables import TENANT_DATA_TABLES

# The migrator's own triggers on legacy and new tables (change capture, two-way sync): never dependents.
MIGRATOR_TRIGGERS = [
    capture.TRIGGER,
    capture.TRUNCATE_TRIGGER,
    twoway.ROW_TRIGGER,
    twoway.WRITE_TRIGGER,
    twoway.TRUNCATE_TRIGGER,
]
KEEPS_IDS = frozenset(t.legacy_table for t in TENANT_DATA_TABLES)  # legacy tables whose new table keeps their ids


@dataclass(frozen=True)
class Dependent:
    schema: str  # the legacy table's schema
    table: str  # the legacy table it depends on
    kind: FindingKind
    name: str  # the object's name, schema-qualified where it has a schema of its own
    detail: str = ""
    # raw names cutover needs to carry it: foreign key (schema, table, constraint, *columns, '->',
    # *referenced columns); grant (role or PUBLIC[, column]); comment ([column]); publication (name)
    parts: tuple[str, ...] = ()


# Kinds whose name is only unique on its table (a grant is named by its role, a trigger or a comment by
# its own name): ``--leave-dependent TABLE.NAME`` names the one on that table.
NAMED_PER_TABLE: frozenset[FindingKind] = frozenset(
    {
        FindingKind.GRANT,
        FindingKind.COLUMN_GRANT,
        FindingKind.COMMENT,
        FindingKind.TRIGGER,
        FindingKind.POLICY,
        FindingKind.ROW_SECURITY,
        FindingKind.RULE,
        FindingKind.PUBLICATION,
    }
)


# What cutover does with each kind: carries it to the new table (``CARRIED``), or, for the rest, refuses
# the tenant unless ``--leave-dependent`` names the object (it then stays with the archived table).
CARRIED: frozenset[FindingKind] = NAMED_PER_TABLE | {
    FindingKind.FOREIGN_KEY_FROM,
    FindingKind.VIEW,
    FindingKind.FUNCTION,
    FindingKind.STATISTICS,
}
# Carried by their own definition, read again once the legacy tables are archived (the server then names
# the archived tables in it) with the new tables put in place of the archived ones.
REDEFINED = frozenset({FindingKind.VIEW, FindingKind.FUNCTION, FindingKind.RULE, FindingKind.STATISTICS})


def carried(dependent: Dependent) -> bool:
    """Whether cutover carries ``dependent`` to the new table (a FOR ALL TABLES publication needs nothing).

    Triggers, policies, row-level security and publication membership are re-created on the new table and
    also stay on the archived one (which nothing writes any more), so a rollback finds them where they were.

    Only a tenant data table's: its new table keeps the legacy ids. A reference table's rows are merged
    into a shared table under new ids (a foreign key would point at other rows), shared by every tenant
    (a grant would open all tenants' rows)."""
    if dependent.kind == FindingKind.PUBLICATION and dependent.detail == "FOR ALL TABLES":
        return True
    return dependent.kind in CARRIED and dependent.table in KEEPS_IDS


def of_tables(schema: str, tables: Iterable[str]) -> list[Dependent]:
    """The dependents of ``schema``'s legacy ``tables`` that exist."""
    rows = db.fetchall(
        "SELECT to_regclass(format('%%I.%%I', %s::text, t))::oid::bigint, t FROM unnest(%s::text[]) t "
        "WHERE to_regclass(format('%%I.%%I', %s::text, t)) IS NOT NULL",
        [schema, list(tables), schema],
    )
    return dependents_of({oid: (schema, table) for oid, table in rows})


def option_name(dependent: Dependent) -> str:
    """How ``--leave-dependent`` names just this object: ``contact_types.app_role`` for a grant on that
    table, where ``app_role`` alone would name the role's grants on every legacy table."""
    return f"{dependent.table}.{dependent.name}" if dependent.kind in NAMED_PER_TABLE else dependent.name


def left_by_option(dependent: Dependent, patterns: tuple[str, ...]) -> bool:
    """Whether ``--leave-dependent`` names the object: patterns match its name (``public.report_*``) or,
    for an object named per table, ``TABLE.NAME`` (:func:`option_name`)."""
    names = {dependent.name, option_name(dependent)}
    return any(fnmatchcase(name, pattern) for name in names for pattern in patterns)


# One row per dependent: (table oid, kind, name, detail). Everything keyed by the legacy tables' oids.
_DEPENDENTS_SQL = """
WITH t(oid) AS (SELECT unnest(%(oids)s::oid[])),
legacy(oid) AS (SELECT unnest(%(all_legacy)s::oid[]))
SELECT DISTINCT d.refobjid::bigint, CASE v.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END,
       format('%%I.%%I', vn.nspname, v.relname), '', ARRAY[v.oid::text]
  FROM t JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = t.oid
           AND d.classid = 'pg_rewrite'::regclass
  JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
  JOIN pg_namespace vn ON vn.oid = v.relnamespace
 WHERE v.oid <> t.oid
UNION ALL
SELECT DISTINCT d.refobjid::bigint, 'function', p.oid::regprocedure::text, 'SQL-standard body', ARRAY[p.oid::text]
  FROM t JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = t.oid
           AND d.classid = 'pg_proc'::regclass
  JOIN pg_proc p ON p.oid = d.objid
UNION ALL
SELECT DISTINCT c.confrelid::bigint, 'foreign key from another table', format('%%I.%%I', n.nspname, o.relname) || '.'
       || quote_ident(c.conname), pg_get_constraintdef(c.oid),
       ARRAY[n.nspname::text, o.relname::text, c.conname::text]
       || ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i)
       || ARRAY['->']
       || ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
  FROM t JOIN pg_depend fd ON fd.refclassid = 'pg_class'::regclass AND fd.refobjid = t.oid
           AND fd.classid = 'pg_constraint'::regclass AND fd.deptype = 'n'
  JOIN pg_constraint c ON c.oid = fd.objid AND c.confrelid = t.oid
  JOIN pg_class o ON o.oid = c.conrelid JOIN pg_namespace n ON n.oid = o.relnamespace
 WHERE c.contype = 'f' AND c.conrelid NOT IN (SELECT oid FROM legacy) AND c.conparentid = 0
UNION ALL
SELECT g.tgrelid::bigint, 'trigger', quote_ident(g.tgname), pg_get_triggerdef(g.oid),
       ARRAY[g.tgrelid::regclass::text]
  FROM pg_trigger g JOIN t ON g.tgrelid = t.oid
 WHERE NOT g.tgisinternal AND g.tgname <> ALL(%(ours)s)
UNION ALL
SELECT r.ev_class::bigint, 'rule', quote_ident(r.rulename), pg_get_ruledef(r.oid), ARRAY[r.oid::text]
  FROM pg_rewrite r JOIN t ON r.ev_class = t.oid WHERE r.rulename <> '_RETURN'
UNION ALL
SELECT p.polrelid::bigint, 'row-level security policy', quote_ident(p.polname),
       coalesce(pg_get_expr(p.polqual, p.polrelid), ''),
       ARRAY[p.polname::text, CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
             CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                           WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
             coalesce(pg_get_expr(p.polqual, p.polrelid), ''), coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')]
       || ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE (SELECT rolname::text FROM pg_roles WHERE oid = r) END
                FROM unnest(p.polroles) r)
  FROM pg_policy p JOIN t ON p.polrelid = t.oid
UNION ALL
SELECT c.oid::bigint, 'row-level security', 'ROW LEVEL SECURITY',
       CASE WHEN c.relforcerowsecurity THEN 'enabled, forced' ELSE 'enabled' END,
       CASE WHEN c.relforcerowsecurity THEN ARRAY['FORCE'] ELSE ARRAY[]::text[] END
  FROM pg_class c JOIN t ON c.oid = t.oid WHERE c.relrowsecurity
UNION ALL
SELECT pr.prrelid::bigint, 'publication', quote_ident(p.pubname), coalesce(pg_get_expr(pr.prqual, pr.prrelid), ''),
       ARRAY[p.pubname::text, coalesce(pg_get_expr(pr.prqual, pr.prrelid), '')]
       || ARRAY(SELECT a.attname::text FROM unnest(pr.prattrs::int2[]) k(n)
                JOIN pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = k.n)
  FROM pg_publication_rel pr JOIN t ON pr.prrelid = t.oid JOIN pg_publication p ON p.oid = pr.prpubid
UNION ALL
SELECT t.oid::bigint, 'publication', quote_ident(p.pubname), 'FOR ALL TABLES', ARRAY[p.pubname::text]
  FROM pg_publication p CROSS JOIN t WHERE p.puballtables
UNION ALL
SELECT s.stxrelid::bigint, 'statistics object', format('%%I.%%I', sn.nspname, s.stxname), '',
       ARRAY[s.oid::text, sn.nspname::text, s.stxname::text]
  FROM pg_statistic_ext s JOIN t ON s.stxrelid = t.oid JOIN pg_namespace sn ON sn.oid = s.stxnamespace
UNION ALL
SELECT c.oid::bigint, 'grant', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
       string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type), ARRAY[coalesce(r.rolname::text, 'PUBLIC')]
  FROM pg_class c JOIN t ON c.oid = t.oid CROSS JOIN LATERAL aclexplode(c.relacl) a
  LEFT JOIN pg_roles r ON r.oid = a.grantee
 WHERE a.grantee <> c.relowner
 GROUP BY c.oid, a.grantee, r.rolname
UNION ALL
SELECT at.attrelid::bigint, 'column grant', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
       || ' on ' || quote_ident(at.attname), string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type),
       ARRAY[coalesce(r.rolname::text, 'PUBLIC'), at.attname::text]
  FROM pg_attribute at JOIN t ON at.attrelid = t.oid JOIN pg_class c ON c.oid = at.attrelid
  CROSS JOIN LATERAL aclexplode(at.attacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
 WHERE at.attacl IS NOT NULL AND a.grantee <> c.relowner
 GROUP BY at.attrelid, at.attname, a.grantee, r.rolname
UNION ALL
SELECT c.oid::bigint, 'grant', quote_ident(r.rolname), string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type),
       ARRAY[r.rolname::text]
  FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
  CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
 WHERE c.oid = ANY(%(owner_carried)s::oid[]) AND a.grantee = c.relowner AND r.rolname <> current_user
 GROUP BY c.oid, r.rolname
UNION ALL
SELECT d.objoid::bigint, 'comment', CASE WHEN d.objsubid = 0 THEN 'table'
       ELSE 'column ' || quote_ident(at.attname) END, d.description,
       CASE WHEN d.objsubid = 0 THEN ARRAY[]::text[] ELSE ARRAY[at.attname::text] END
  FROM pg_description d JOIN t ON d.objoid = t.oid AND d.classoid = 'pg_class'::regclass
  LEFT JOIN pg_attribute at ON at.attrelid = d.objoid AND at.attnum = d.objsubid
"""


# Whether anything at all depends on the tables (the common case is nothing, and the full query costs
# about 5 ms to plan, more than it takes to run): what pg_depend ties to them besides their own parts
# (indexes, sequences, constraints on the table itself, its row type, defaults), their grants, comments
# and row-level security, and publications of all tables.
_ANY_DEPENDENT_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY(%s::oid[])
               AND (d.classid IN ('pg_rewrite'::regclass, 'pg_proc'::regclass, 'pg_trigger'::regclass,
                                  'pg_policy'::regclass, 'pg_publication_rel'::regclass,
                                  'pg_statistic_ext'::regclass)
                    OR (d.classid = 'pg_constraint'::regclass AND d.deptype = 'n'
                        AND EXISTS (SELECT 1 FROM pg_constraint c WHERE c.oid = d.objid
                                    AND NOT c.conrelid = ANY(%s::oid[])))))
    OR EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = ANY(%s::oid[]) AND (c.relacl IS NOT NULL OR c.relrowsecurity))
    OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = ANY(%s::oid[]) AND a.attacl IS NOT NULL)
    OR EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = ANY(%s::oid[]) AND d.classoid = 'pg_class'::regclass)
    OR EXISTS (SELECT 1 FROM pg_publication WHERE puballtables)
    OR EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = ANY(%s::oid[]) AND c.relowner <> (
               SELECT oid FROM pg_roles WHERE rolname = current_user))
"""


def dependents_of(tables: dict[int, tuple[str, str]], all_legacy: Iterable[int] = ()) -> list[Dependent]:
    """The objects depending on the tables ``oid -> (schema, table)``, one query; foreign keys from the
    tables of ``all_legacy`` (the legacy tables themselves, which move together) are not dependents."""
    if not tables:
        return []
    everything_legacy = [*tables, *all_legacy]
    # A tenant data table that another role owns (the application's, typically): the owner's privileges
    # are a grant the new table needs, which the migrator's login owns. Not a reference table's owner: a
    # grant on the shared table would open every tenant's rows (see ``carried``), and the owner of every
    # tenant's reference tables would otherwise hold each tenant back for a decision.
    owner_carried = [oid for oid, (_schema, table) in tables.items() if table in KEEPS_IDS]
    if not db.fetchvalue(_ANY_DEPENDENT_SQL, [list(tables), everything_legacy, *[list(tables)] * 3, owner_carried]):
        return functions_naming(tables)
    rows = db.fetchall(
        _DEPENDENTS_SQL,
        {
            "oids": list(tables),
            "all_legacy": everything_legacy,
            "ours": MIGRATOR_TRIGGERS,
            "owner_carried": owner_carried,
        },
    )
    found = [
        Dependent(*tables[oid], FindingKind(kind), name, detail or "", tuple(parts or ()))
        for oid, kind, name, detail, parts in rows
    ]
    return found + functions_naming(tables)


# Functions of the database's own schemas (not the system's, not an extension's) with a text body.
_FUNCTION_SOURCES_SQL = (
    "SELECT p.oid::regprocedure::text, n.nspname, p.prosrc FROM pg_proc p "
    "JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang "
    # FirstNormalObjectId: the system's own functions (most of pg_proc) are not looked at
    "WHERE p.oid >= 16384 AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%' "
    # another tenant's functions are that tenant's business (and reading them all, for each of
    # thousands of tenants, would cost the square of their number)
    "AND (n.nspname = ANY(%s) OR n.nspname NOT LIKE 'tenant\\_%%') "
    "AND l.lanname IN ('plpgsql', 'sql') AND p.prosqlbody IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid "
    "AND e.deptype = 'e')"
)


def functions_naming(tables: dict[int, tuple[str, str]]) -> list[Dependent]:
    """Functions whose source text names a legacy table: qualified anywhere, or unqualified by a function of
    the table's own schema (whose search path it likely runs with)."""
    patterns = {
        (schema, table): (
            re.compile(rf'(?<![\w$"]){re.escape(schema)}"?\s*\.\s*"?{re.escape(table)}(?![\w$])', re.IGNORECASE),
            re.compile(rf'(?<![\w$."]){re.escape(table)}(?![\w$])', re.IGNORECASE),
        )
        for schema, table in tables.values()
    }
    found = []
    schemas = sorted({schema for schema, _table in tables.values()})
    for signature, function_schema, source in db.fetchall(_FUNCTION_SOURCES_SQL, [schemas]):
        for (schema, table), (qualified, bare) in patterns.items():
            if qualified.search(source) or (function_schema == schema and bare.search(source)):
                found.append(
                    Dependent(schema, table, FindingKind.FUNCTION_BY_NAME, signature, "its source names the table")
                )
    return found


# --- cutover: carrying dependents to the new tables -------------------------------------------------------

# MAINTAIN: PostgreSQL 17 and later (an owner holds it there).
PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"})


def blocking(found: list[Dependent], leave: tuple[str, ...]) -> list[Dependent]:
    """Dependents cutover neither carries nor was told to leave with the archived table."""
    return [d for d in found if not carried(d) and not left_by_option(d, leave)]


def refuse_uncarried(scope: str, found: list[Dependent], leave: tuple[str, ...], drop: bool = False) -> None:
    """Refuse the cutover of ``scope`` (one line, nothing changed) while a dependent would be left behind; with
    ``drop`` (--drop-legacy) every dependent cutover does not carry, left by option or not: a drop never
    cascades, and an object left with a dropped table would be dropped with it."""
    # Redefined objects are read again from the archived tables: with --drop-legacy there are none.
    left = [d for d in found if not carried(d) or d.kind in REDEFINED] if drop else blocking(found, leave)
    if not left:
        return
    listed = "; ".join(f"{d.kind} {d.name} on {d.schema}.{d.table}" for d in left[:5])
    more = f" and {len(left) - 5} more" if len(left) > 5 else ""
    if drop:
        raise MigrationError(
            f"{scope}: {len(left)} object(s) depend on legacy tables that --drop-legacy would drop: {listed}{more}; "
            "nothing was dropped (a drop never cascades): drop those objects first, or archive instead of dropping"
        )
    raise MigrationError(
        f"{scope}: {len(left)} object(s) depend on legacy tables and cutover does not carry them: {listed}{more}; "
        "nothing was archived: drop them (and re-create them over the new tables after cutover), or pass "
        "--leave-dependent NAME to leave each with the archived legacy table"
    )


def detach_foreign_keys(found: list[Dependent]) -> None:
    """Drop the foreign keys of other tables that reference the legacy tables (re-added by :func:`carry`)."""
    for dependent in found:
        if dependent.kind == FindingKind.FOREIGN_KEY_FROM:
            schema, table, constraint = dependent.parts[:3]
            db.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(schema, table), sql.Identifier(constraint)
                )
            )


def carry(
    found: list[Dependent],
    new_tables: dict[tuple[str, str], sql.Identifier],
    leave: tuple[str, ...] = (),
    archived: dict[tuple[str, str], sql.Identifier] | None = None,
) -> list[dict[str, str]]:
    """Re-create each carried dependent on the new table of its legacy table; returns what was carried.

    ``new_tables``: (legacy schema, legacy table) -> the new table; ``archived``: -> where the legacy table
    is now (views, functions, rules and statistics are redefined from their definition, which names it).
    Foreign keys are added ``NOT VALID`` and validated (ids are kept, so every referencing row still finds
    its row).
    """
    archived = archived or {}
    done = []
    redefined: set[str] = set()  # a view over two legacy tables is one dependent of each, redefined once
    for dependent in found:
        target = new_tables.get((dependent.schema, dependent.table))
        if target is None or not carried(dependent) or dependent.detail == "FOR ALL TABLES":
            continue
        if left_by_option(dependent, leave):  # stays with the archived table on the operator's word
            continue
        if dependent.kind in REDEFINED:
            if dependent.name in redefined:
                continue
            redefined.add(dependent.name)
            statements = _redefinition(dependent, archived, new_tables)
        else:
            statements = _carry_statements(dependent, target)
        for statement in statements:
            db.execute(statement)
        done.append({"kind": str(dependent.kind), "name": dependent.name, "table": dependent.table})
    return done


_DEFINITION = {
    FindingKind.VIEW: "SELECT format('CREATE OR REPLACE VIEW %%s AS %%s', c.oid::regclass, pg_get_viewdef(c.oid)) "
    "FROM pg_class c WHERE c.oid = %s::oid",
    FindingKind.FUNCTION: "SELECT pg_get_functiondef(%s::oid)",
    FindingKind.RULE: "SELECT pg_get_ruledef(%s::oid)",
    FindingKind.STATISTICS: "SELECT pg_get_statisticsobjdef(%s::oid)",
}


def _printed(table: sql.Identifier) -> str:
    """The table's name as the server prints it in a definition (qualified unless on the search path,
    quoted only where needed): what ``regclass`` prints, by the same rule."""
    return str(db.fetchvalue("SELECT to_regclass(%s)::text", [db.render(table)]))


def _redefinition(
    dependent: Dependent,
    archived: dict[tuple[str, str], sql.Identifier],
    new_tables: dict[tuple[str, str], sql.Identifier],
) -> list[sql.Composable]:
    """The object's definition as the server prints it now that the legacy tables are archived, each archived
    table's name (distinctive: ``<archive>.<tenant>__<table>``) replaced by its new table's.

    Archived names are distinctive, so both the qualified name and a column's ``table.`` prefix (how a
    table referenced without an alias is printed) are replaced wherever they stand. A rule stays on the
    archived table too; a statistics object's name is taken over (it is dropped there first).
    """
    oid = dependent.parts[0]
    text = str(db.fetchvalue(_DEFINITION[dependent.kind], [oid]))
    for key, archived_table in archived.items():
        if key not in new_tables:  # a reference table's rows went to a shared table under other ids: not here
            continue
        old_name, new_name = _printed(archived_table), _printed(new_tables[key])
        text = text.replace(old_name, new_name)
        # A table referenced without an alias is printed by its (archived) name before its columns too.
        old_bare, new_bare = old_name.rpartition(".")[2], new_name.rpartition(".")[2]
        text = re.sub(rf'(?<![\w"$.]){re.escape(old_bare)}(?=\.)', new_bare.replace("\\", "\\\\"), text)
    statements: list[sql.Composable] = []
    if dependent.kind == FindingKind.STATISTICS:
        statements.append(sql.SQL("DROP STATISTICS {}").format(sql.Identifier(*dependent.parts[1:3])))
    # The server's own text of the definition, with one name swapped for another it printed itself.
    statements.append(sql.SQL(text))
    return statements


def _carry_statements(dependent: Dependent, target: sql.Identifier) -> list[sql.Composable]:
    if dependent.kind == FindingKind.FOREIGN_KEY_FROM:
        return _foreign_key_statements(dependent, target)
    if dependent.kind in (FindingKind.GRANT, FindingKind.COLUMN_GRANT):
        privileges = [p.strip() for p in dependent.detail.split(",")]
        if not set(privileges) <= PRIVILEGES:
            raise MigrationError(f"grant {dependent.name} ({dependent.detail}) cannot be carried: unknown privilege")
        grantee, *column = dependent.parts
        return [
            sql.SQL("GRANT {p}{cols} ON {t} TO {r}").format(
                p=sql.SQL(", ").join(sql.SQL(p) for p in privileges),  # one of PRIVILEGES
                cols=sql.SQL(" ({})").format(sql.Identifier(column[0])) if column else sql.SQL(""),
                t=target,
                r=sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee),
            )
        ]
    if dependent.kind == FindingKind.COMMENT:
        if not dependent.parts:
            return [sql.SQL("COMMENT ON TABLE {} IS {}").format(target, sql.Literal(dependent.detail))]
        return [
            sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                target, sql.Identifier(dependent.parts[0]), sql.Literal(dependent.detail)
            )
        ]
    if dependent.kind == FindingKind.TRIGGER:
        return [_trigger_statement(dependent, target)]
    if dependent.kind == FindingKind.ROW_SECURITY:
        force = [sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(target)] if dependent.parts else []
        return [sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(target), *force]
    if dependent.kind == FindingKind.POLICY:
        name, permissive, command, using, check, *roles = dependent.parts
        return [
            sql.SQL("CREATE POLICY {n} ON {t} AS {p} FOR {c} TO {r}{using}{check}").format(
                n=sql.Identifier(name),
                t=target,
                p=sql.SQL(permissive),  # PERMISSIVE or RESTRICTIVE, from the catalog query
                c=sql.SQL(command),  # SELECT, INSERT, UPDATE, DELETE or ALL
                r=sql.SQL(", ").join(sql.SQL("PUBLIC") if r == "PUBLIC" else sql.Identifier(r) for r in roles),
                # the server's own text of the expressions, over the same column names as the new table's
                using=sql.SQL(" USING ({})").format(sql.SQL(using)) if using else sql.SQL(""),
                check=sql.SQL(" WITH CHECK ({})").format(sql.SQL(check)) if check else sql.SQL(""),
            )
        ]
    if dependent.kind == FindingKind.PUBLICATION:
        name, row_filter, *columns = dependent.parts
        return [
            sql.SQL("ALTER PUBLICATION {p} ADD TABLE {t}{cols}{where}").format(
                p=sql.Identifier(name),
                t=target,
                cols=sql.SQL(" ({})").format(db.ident_list(columns)) if columns else sql.SQL(""),
                where=sql.SQL(" WHERE ({})").format(sql.SQL(row_filter)) if row_filter else sql.SQL(""),
            )
        ]
    raise MigrationError(f"{dependent.kind} {dependent.name}: cutover does not carry this kind")


def _trigger_statement(dependent: Dependent, target: sql.Identifier) -> sql.Composable:
    """The legacy trigger's own definition (pg_get_triggerdef) with the new table in place of the legacy one."""
    (printed_table,) = dependent.parts  # the legacy table as the definition spells it
    marker = f" ON {printed_table} "
    if dependent.detail.count(marker) != 1:
        raise MigrationError(
            f"trigger {dependent.name} on {dependent.schema}.{dependent.table} cannot be carried: its definition "
            f"({dependent.detail}) does not name the table once; drop it, or pass --leave-dependent {dependent.name}"
        )
    before, after = dependent.detail.split(marker)
    return sql.SQL("{} ON {} {}").format(sql.SQL(before), target, sql.SQL(after))


# What follows the referenced columns in pg_get_constraintdef: MATCH, ON UPDATE / ON DELETE actions,
# DEFERRABLE: keywords only, kept as the server spelled them.
_FOREIGN_KEY_TAIL = re.compile(
    r"\)((?: (?:MATCH \w+"
    r"|ON (?:UPDATE|DELETE) (?:NO ACTION|RESTRICT|CASCADE|SET NULL|SET DEFAULT)(?: \([^)]*\))?"
    r"|NOT DEFERRABLE|DEFERRABLE|INITIALLY (?:DEFERRED|IMMEDIATE)))*)( NOT VALID)?$"
)


def _foreign_key_statements(dependent: Dependent, target: sql.Identifier) -> list[sql.Composable]:
    schema, table, constraint, *columns = dependent.parts
    arrow = columns.index("->")
    referencing, referenced = columns[:arrow], columns[arrow + 1 :]
    tail = _FOREIGN_KEY_TAIL.search(dependent.detail)
    if tail is None:
        raise MigrationError(
            f"foreign key {dependent.name} ({dependent.detail}) cannot be carried: its definition has an unknown "
            f"form; drop it, or pass --leave-dependent {dependent.name}"
        )
    table_ident, name = sql.Identifier(schema, table), sql.Identifier(constraint)
    validate = sql.SQL("ALTER TABLE {t} VALIDATE CONSTRAINT {c}").format(t=table_ident, c=name)
    # one the legacy side never validated (rows that break it were kept on purpose) stays so
    return [
        sql.SQL(
            "ALTER TABLE {t} ADD CONSTRAINT {c} FOREIGN KEY ({cols}) REFERENCES {ref} ({refcols}){tail} NOT VALID"
        ).format(
            t=table_ident,
            c=name,
            cols=db.ident_list(referencing),
            ref=target,
            refcols=db.ident_list(referenced),
            tail=sql.SQL(tail.group(1)),
        ),
        *([] if tail.group(2) else [validate]),
    ]
