"""Two-way sync: the legacy tables and the new ones kept equal by row triggers, from ``data --online``
until ``finalize`` (or ``rollback``).

Both sides are real tables. A write on either side is made on the other side by an ``AFTER ... FOR
EACH ROW`` trigger, in the writer's own transaction: the two commit or roll back together, so in
every snapshot both sides hold the same rows. The old application keeps every semantic PostgreSQL
gives a real table (row locks and the re-check of concurrent updates, ``FOR UPDATE``, ``ON
CONFLICT``, ``COPY``, its foreign keys, unique constraints, grants and sequences); the new one gets
them on the new tables. A write holds the row lock on both sides, taken in the order it reaches
them: two writers meeting from opposite sides deadlock (one is told at once, or after the sync's lock
timeout, and retries), they never lose an update.

- **The row triggers** (:data:`ROW_TRIGGER`) call one function, ``apply_row``, whose arguments are
  the table's key columns and the statements (:mod:`migrator.ops.twoway_statements`) that first check
  for a writer crossing from the other side, then re-copy the written keys to the other side: an
  upsert from the current row (inserts and updates) and a delete when the row is gone (deletes, and
  updates that changed the key). Legacy to new is
  phase 3's own remapping ``SELECT`` (reference ids translated through the map, legacy timestamps
  read in the legacy zone); new to legacy is its inverse (a shared reference row the tenant never
  had is added to its legacy reference table first, with a map entry).
- **No echo.** The trigger sets ``salesflow.syncing`` for the duration of its own statements; the
  triggers' ``WHEN`` clause skips rows written while it is set. A foreign key's cascade run by the
  application's statement is not the trigger's: its rows are synced like any other (PostgreSQL fires
  its ``RI_ConstraintTrigger`` triggers before ours, which sort after them by name).
- **Reference tables** are per tenant on the legacy side and shared on the new side:
  :func:`reference_from_legacy` merges a tenant's added, recoded or deleted row (a rename changes the
  shared row only while no other tenant shares it; otherwise cutover reports the difference), and
  :func:`reference_from_shared` carries an edit of a shared row to every synced tenant that has it.
- **One id space** (:mod:`migrator.ops.sequences`). Both sequences of a table step by 2 from one
  start past every id either side issued, one on odd, one on even values; ``finalize`` (new side) or
  ``rollback`` (legacy side) sets the survivor back to steps of 1, past everything issued.
- **Observing the old application.** A statement trigger on each legacy table appends to
  ``migrator_sync.legacy_writes`` when the old application (not the sync) writes it: finalize waits
  for it to stay empty.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from django.db import transaction
from psycopg import sql

from migrator import catalog, db
from migrator.ops import twoway_sql
from migrator.ops.table_copy import TableCopy
from migrator.ops.twoway_sql import SYNC_SCHEMA
from migrator.ops.twoway_statements import (
    LegacyChild,
    ReverseReference,
    forward_statements,
    reference_value_columns,
    reverse_statements,
)
from migrator.tables import LegacyTable

SYNCING = "salesflow.syncing"
# After PostgreSQL's own "RI_ConstraintTrigger_*" (upper case sorts first): a cascade's rows first.
ROW_TRIGGER = "salesflow_sync"
WRITE_TRIGGER = "salesflow_sync_legacy_write"
TRUNCATE_TRIGGER = "salesflow_sync_truncate"
# On a rolled-back scope's new tables from the sync's stop until they are dropped: a write there would be lost.
ROLLED_BACK_TRIGGER = "salesflow_rolled_back"
# How long a synced write waits for the other side's row (see apply_row): under deadlock_timeout, above
# the migrator's --lock-timeout (online.check_lock_timeout keeps it so).
SYNC_LOCK_TIMEOUT_MS = 500
SCOPES = sql.Identifier(SYNC_SCHEMA, "scopes")
LEGACY_WRITES = sql.Identifier(SYNC_SCHEMA, "legacy_writes")
SYNCED_COLUMNS = sql.Identifier(SYNC_SCHEMA, "synced_columns")
SHARED_SCOPE = "(shared)"  # the bookkeeping of the shared reference tables, synced with every tenant
MAP = sql.Identifier("public", "migrator_reference_map")

# A session or transaction whose writes the sync must not carry (verify's rolled-back checks on the new tables).
SKIP_SYNC_FOR_SESSION = sql.SQL("SELECT set_config({}, 'on', false)").format(sql.Literal(SYNCING))
SKIP_SYNC_IN_TRANSACTION = sql.SQL("SELECT set_config({}, 'on', true)").format(sql.Literal(SYNCING))

_NOT_SYNCING = sql.SQL("(current_setting({}, true) IS DISTINCT FROM 'on')").format(sql.Literal(SYNCING))


def _args() -> dict[str, sql.Composable]:
    return {
        "schema": sql.Identifier(SYNC_SCHEMA),
        "scopes": SCOPES,
        "legacy_writes": LEGACY_WRITES,
        "syncing": sql.Literal(SYNCING),
        "sync_lock_timeout": sql.Literal(f"{SYNC_LOCK_TIMEOUT_MS}ms"),
        "synced_columns": SYNCED_COLUMNS,
    }


def sync_ready() -> bool:
    return catalog.table_exists(SYNC_SCHEMA, "scopes")


def ensure_sync_schema() -> None:
    """The schema, bookkeeping and functions (idempotent; serialised: tenants start their sync in parallel)."""
    with transaction.atomic():
        db.execute("SELECT pg_advisory_xact_lock(hashtextextended('migrator two-way sync setup', 0))")
        # the schema's comment names the release of its functions: an earlier release's get this one's
        if sync_ready() and db.fetchvalue(
            "SELECT obj_description(to_regnamespace(%s), 'pg_namespace') = %s",
            [SYNC_SCHEMA, twoway_sql.FUNCTIONS_RELEASE],
        ):
            return
        for statement in (*twoway_sql.TABLES, *twoway_sql.FUNCTIONS, *twoway_sql.GUARD):
            db.execute(sql.SQL(statement).format(**_args()))
        db.execute(
            sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                sql.Identifier(SYNC_SCHEMA), sql.Literal(twoway_sql.FUNCTIONS_RELEASE)
            )
        )
        # the application's roles write through the SECURITY DEFINER functions only
        db.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(SYNC_SCHEMA)))
        if not ddl_guarded() and db.fetchvalue("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            # event triggers need a superuser; created again only when not both are there
            for statement in twoway_sql.GUARD_TRIGGERS:
                db.execute(sql.SQL(statement).format(**_args()))


def ddl_guarded() -> bool:
    """Whether schema changes of synced tables are refused (the event triggers need a superuser to create)."""
    return bool(db.fetchvalue("SELECT count(*) = 2 FROM pg_event_trigger WHERE evtname LIKE 'salesflow_sync_guard%%'"))


def migrator_ddl() -> None:
    """The migrator's own DDL on synced tables follows in this transaction: the guard lets it through."""
    db.execute(SKIP_SYNC_IN_TRANSACTION)


# --- which scopes are synced ---------------------------------------------------------------


def synced_scopes() -> list[str]:
    if not sync_ready():
        return []
    return [r[0] for r in db.fetchall(sql.SQL("SELECT scope FROM {} ORDER BY scope").format(SCOPES))]


def is_synced(scope: str) -> bool:
    if not sync_ready():
        return False
    return bool(db.fetchvalue(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE scope = %s)").format(SCOPES), [scope]))


def synced_tables(scope: str) -> dict[str, str]:
    """Legacy table -> its new table ("schema.table"), for a synced scope (empty: not synced)."""
    if not sync_ready():
        return {}
    found = db.fetchvalue(sql.SQL("SELECT tables FROM {} WHERE scope = %s").format(SCOPES), [scope])
    if found is None:
        return {}
    return dict(json.loads(found) if isinstance(found, str) else found)


def triggers_missing(scope: str) -> list[str]:
    """Legacy tables of a synced scope whose row trigger is gone or disabled (their writes are not synced)."""
    return catalog.tables_without_trigger(scope, list(synced_tables(scope)), ROW_TRIGGER)


# --- installing and removing ---------------------------------------------------------------


def _row_trigger(table: sql.Composable, function: str, args: list[str]) -> sql.Composed:
    return sql.SQL(
        "CREATE OR REPLACE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW "
        "WHEN {not_syncing} EXECUTE FUNCTION {fn}({args})"
    ).format(
        trigger=sql.Identifier(ROW_TRIGGER),
        table=table,
        not_syncing=_NOT_SYNCING,
        fn=sql.Identifier(SYNC_SCHEMA, function),
        args=sql.SQL(", ").join(sql.Literal(a) for a in args),
    )


def _truncate_trigger(table: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "CREATE OR REPLACE TRIGGER {trigger} BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {fn}()"
    ).format(trigger=sql.Identifier(TRUNCATE_TRIGGER), table=table, fn=sql.Identifier(SYNC_SCHEMA, "refuse_truncate"))


def _write_trigger(scope: str, table: str) -> sql.Composed:
    return sql.SQL(
        "CREATE OR REPLACE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH STATEMENT "
        "WHEN {not_syncing} EXECUTE FUNCTION {fn}({scope}, {tbl})"
    ).format(
        trigger=sql.Identifier(WRITE_TRIGGER),
        table=sql.Identifier(scope, table),
        not_syncing=_NOT_SYNCING,
        fn=sql.Identifier(SYNC_SCHEMA, "note_legacy_write"),
        scope=sql.Literal(scope),
        tbl=sql.Literal(table),
    )


def install_row_sync(
    copy: TableCopy, references: Iterable[ReverseReference] = (), children: Iterable[LegacyChild] = ()
) -> None:
    """Both directions between ``copy``'s legacy table and its new table (caller's transaction, tables locked)."""
    # a rollback that stopped the sync and did not drop the new table (it failed after): the sync writes there
    db.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(ROLLED_BACK_TRIGGER), copy.target))
    key = json.dumps(list(copy.key))
    for table, (copying, deleting) in (
        (copy.source, forward_statements(copy)),
        (copy.target, reverse_statements(copy, references, children)),
    ):
        statements = [db.render(s) for s in (*copying, *deleting)]
        db.execute(_row_trigger(table, "apply_row", [key, str(len(copying)), *statements]))
    db.execute(_write_trigger(copy.source_schema, copy.source_table))
    db.execute(_truncate_trigger(copy.source))
    db.execute(_truncate_trigger(copy.target))


def install_reference_sync(
    tenant_id: str,
    schema: str,
    ref: LegacyTable,
    used_by: list[tuple[str, str, str]],
    schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ,
) -> None:
    """A tenant's legacy reference table -> the shared table (``used_by``: [new table, legacy table, column])."""
    columns = json.dumps(reference_value_columns(schema, ref, schema_catalog))
    args = [tenant_id, ref.map_name, ref.shared_schema, ref.table, ref.merge_key, columns, json.dumps(used_by)]
    db.execute(_row_trigger(sql.Identifier(schema, ref.legacy_table), "reference_from_legacy", args))
    db.execute(_write_trigger(schema, ref.legacy_table))
    db.execute(_truncate_trigger(sql.Identifier(schema, ref.legacy_table)))


def ensure_shared_reference_sync(
    ref: LegacyTable, tenant_schema: str, schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ
) -> None:
    """The shared table -> every synced tenant (once per shared table; the caller holds its lock)."""
    shared = sql.Identifier(ref.shared_schema, ref.table)
    exists = db.fetchvalue(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = {} AND tgname = %s)").format(
            catalog.RELATION_OID
        ),
        [ref.shared_schema, ref.table, ROW_TRIGGER],
    )
    if exists:
        return
    columns = json.dumps(reference_value_columns(tenant_schema, ref, schema_catalog))
    db.execute(_row_trigger(shared, "reference_from_shared", [ref.map_name, ref.legacy_table, columns]))
    # every synced tenant's reference rows are merged into it by those columns: the guard keeps them
    _record_columns(SHARED_SCOPE, "new", ref.shared_schema, ref.table)


def _record_columns(scope: str, side: str, schema: str, table: str) -> None:
    """``schema.table``'s columns as the sync's statements name them now (what the schema-change guard keeps)."""
    db.execute(
        sql.SQL(
            "INSERT INTO {} (relid, scope, side, columns) SELECT r, %s, %s, {}.columns_of(r) "
            "FROM (SELECT {} AS r) x ON CONFLICT (relid) DO UPDATE SET columns = EXCLUDED.columns"
        ).format(SYNCED_COLUMNS, sql.Identifier(SYNC_SCHEMA), catalog.RELATION_OID),
        [scope, side, schema, table],
    )


def record_synced(scope: str, tenant_id: str | None, tables: dict[str, str]) -> None:
    sides = [("legacy", scope, legacy) for legacy in tables] + [
        ("new", *new.split(".", 1)) for new in tables.values() if new
    ]
    for side, schema, table in sides:
        _record_columns(scope, side, schema, table)
    db.execute(
        sql.SQL(
            "INSERT INTO {} (scope, tenant_id, tables) VALUES (%s, %s, %s::jsonb) "
            "ON CONFLICT (scope) DO UPDATE SET tables = EXCLUDED.tables, synced_at = now()"
        ).format(SCOPES),
        [scope, tenant_id, json.dumps(tables)],
    )


def refuse_writes_to_new_tables(copies: Iterable[TableCopy]) -> None:
    """The new tables of a scope whose sync stopped for a rollback refuse every write until the rollback
    drops them (caller's transaction): the legacy tables hold the rows now, and a write to a new table
    would be lost with it, its id issued again by the legacy sequence. The sync schema's functions must be
    this release's (:func:`ensure_sync_schema`)."""
    for copy in copies:
        db.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {trigger} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION {fn}({legacy})"
            ).format(
                trigger=sql.Identifier(ROLLED_BACK_TRIGGER),
                table=copy.target,
                fn=sql.Identifier(SYNC_SCHEMA, "refuse_write_rolled_back"),
                legacy=sql.Literal(f"{copy.source_schema}.{copy.source_table}"),
            )
        )


def remove_sync(scope: str) -> list[str]:
    """Every trigger of the scope's two-way sync gone, its bookkeeping row too (caller's transaction).

    Returns the tables whose triggers were dropped. The shared reference tables' triggers stay
    while another scope is synced (they skip tenants that are not)."""
    tables = synced_tables(scope)
    migrator_ddl()
    dropped = []
    for legacy, new in tables.items():
        sides = [(scope, legacy)] + ([(new.split(".", 1)[0], new.split(".", 1)[1])] if new else [])
        for schema, table in sides:
            if not catalog.table_exists(schema, table):
                continue
            for trigger in (ROW_TRIGGER, WRITE_TRIGGER, TRUNCATE_TRIGGER):
                db.execute(
                    sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                        sql.Identifier(trigger), sql.Identifier(schema, table)
                    )
                )
            dropped.append(f"{schema}.{table}")
    if sync_ready():
        db.execute(sql.SQL("DELETE FROM {} WHERE scope = %s").format(SCOPES), [scope])
        db.execute(sql.SQL("DELETE FROM {} WHERE scope = %s").format(LEGACY_WRITES), [scope])
        db.execute(sql.SQL("DELETE FROM {} WHERE scope = %s").format(SYNCED_COLUMNS), [scope])
    return dropped


def remove_shared_reference_sync_if_unused(refs: Iterable[LegacyTable]) -> None:
    if synced_scopes():
        return
    if sync_ready():
        db.execute(sql.SQL("DELETE FROM {} WHERE scope = %s").format(SYNCED_COLUMNS), [SHARED_SCOPE])
    migrator_ddl()
    for ref in refs:
        if catalog.table_exists(ref.shared_schema, ref.table):
            db.execute(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    sql.Identifier(ROW_TRIGGER), sql.Identifier(ref.shared_schema, ref.table)
                )
            )


def drop_sync_schema_if_unused() -> bool:
    if not catalog.schema_exists(SYNC_SCHEMA) or synced_scopes():
        return False
    # its event triggers go with their functions
    db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SYNC_SCHEMA)))
    return True


# --- what cutover and rollback check ---------------------------------------------------------------


def reference_differences(tenant_id: str, schema: str, ref: LegacyTable, sample: int = 20) -> list[str]:
    """A tenant's legacy ``ref`` rows with no shared row, or whose values differ from the shared row's."""
    columns = reference_value_columns(schema, ref)
    legacy_values = sql.SQL(", ").join(sql.SQL("l.{}").format(sql.Identifier(c)) for c in columns)
    shared_values = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns)
    rows = db.fetchall(
        sql.SQL(
            "SELECT l.id, l.{key}::text, m.new_id, s.id IS NULL FROM {legacy} l "
            "LEFT JOIN {map} m ON m.tenant_id = %s AND m.reference_table = %s AND m.old_id = l.id "
            "LEFT JOIN {shared} s ON s.id = m.new_id "
            "WHERE s.id IS NULL OR ROW({lv}) IS DISTINCT FROM ROW({sv}) ORDER BY l.id LIMIT %s"
        ).format(
            key=sql.Identifier(ref.merge_key),
            legacy=catalog.own_rows(schema, ref.legacy_table),
            map=MAP,
            shared=sql.Identifier(ref.shared_schema, ref.table),
            lv=legacy_values,
            sv=shared_values,
        ),
        [tenant_id, ref.map_name, sample],
    )
    return [
        f"{schema}.{ref.legacy_table} id {row_id} ({ref.merge_key} {key!r}) "
        + ("has no shared row" if missing else f"differs from shared row {ref.shared_schema}.{ref.table} id {new_id}")
        for row_id, key, new_id, missing in rows
    ]


def _defaults(schema: str, table: str) -> dict[str, str]:
    rows = catalog.relation_rows(
        "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
        "ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = {oid} AND a.attgenerated = ''",
        schema,
        table,
    )
    return dict(rows)


def values_only_on_new_side(copy: TableCopy) -> dict[str, int]:
    """Columns of the new table the legacy table lacks -> rows holding a value other than the column's
    default (NULL when it has none): a rollback to the legacy table would discard those values."""
    legacy = {c.name for c in copy.schema_catalog.columns(copy.source_schema, copy.source_table)}
    extra = [c.name for c in copy.schema_catalog.columns(copy.target_schema, copy.target_table) if c.name not in legacy]
    if not extra:
        return {}
    # What an insert without the column gives it: the copy's fill (a Django default), the database
    # default (the catalog's own text of it) or NULL. Such a value is not lost: a new copy makes it again.
    given: dict[str, sql.Composable] = {
        c: sql.SQL(d) for c, d in _defaults(copy.target_schema, copy.target_table).items()
    }
    given |= {f.column: sql.SQL(f.expression) for f in copy.fills if f.expression}
    counted = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE {c} IS DISTINCT FROM ({given}))").format(
            c=sql.Identifier(c), given=given.get(c, sql.SQL("NULL"))
        )
        for c in extra
    )
    counts = db.fetchone(sql.SQL("SELECT {} FROM {}").format(counted, copy.target)) or ()
    return {c: int(n) for c, n in zip(extra, counts, strict=True) if n}


# --- what finalize watches -----------------------------------------------------------------


def legacy_writes_since(scopes: list[str], since: object) -> dict[tuple[str, str], int]:
    """(scope, legacy table) -> statements of the old application that wrote it since ``since``."""
    if not sync_ready():
        return {}
    rows = db.fetchall(
        sql.SQL(
            "SELECT scope, tbl, count(*) FROM {} WHERE scope = ANY(%s) AND at >= %s GROUP BY 1, 2 ORDER BY 1, 2"
        ).format(LEGACY_WRITES),
        [scopes, since],
    )
    return {(scope, tbl): int(n) for scope, tbl, n in rows}


def forget_legacy_writes_before(since: object) -> None:
    if sync_ready():
        db.execute(sql.SQL("DELETE FROM {} WHERE at < %s").format(LEGACY_WRITES), [since])
