"""Change capture for the online migration: row triggers on legacy tables, a capture table, and its apply.

``data --online`` installs, before it copies a legacy table, an ``AFTER INSERT OR UPDATE OR DELETE
... FOR EACH ROW`` trigger that writes the changed row's key and operation into
``migrator_online.changes``, in the writer's own transaction: a write and its capture row commit (or
roll back) together. The trigger function is ``SECURITY DEFINER``, so the application's roles need
no privilege on the migrator's schema. ``TRUNCATE`` cannot be captured row by row and is refused.

Applying re-copies the changed keys through the copy's own remapping ``SELECT`` (an upsert, and a
delete of the keys gone from the source: a delete + re-insert would fire the target's cascading
foreign keys), in batches; each batch deletes the capture rows it consumed in its own transaction, so the batch
and its capture position commit together and a killed apply is simply done again (it is
idempotent: it reads the source's current rows). A batch runs at ``REPEATABLE READ``: the capture
rows it takes and the source rows it reads are of one snapshot, so what it writes is the source as
of that snapshot. A batch that ends between the changes of related rows (a contact deleted before
its activities) fails its deferred foreign keys at commit; then every visible change of the scope
is applied in one transaction, which is the source's consistent state.

Only tables whose copy finished (``ready``) are applied: before that, the copy itself picks the
rows up, and a re-inserted row above its progress would make a resumed copy skip the rows below.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from psycopg import sql

from migrator import catalog, db
from migrator.core.errors import MigrationError
from migrator.ops import recopy
from migrator.ops.table_copy import TableCopy

CAPTURE_SCHEMA = "migrator_online"
CHANGES = sql.Identifier(CAPTURE_SCHEMA, "changes")
KEYS = sql.SQL("%s::jsonb")  # the keys an apply re-copies: a jsonb array, one parameter
CAPTURED_TABLES = sql.Identifier(CAPTURE_SCHEMA, "captured_tables")
CAPTURE_FUNCTION = sql.Identifier(CAPTURE_SCHEMA, "capture")
REFUSE_TRUNCATE_FUNCTION = sql.Identifier(CAPTURE_SCHEMA, "refuse_truncate")
TRIGGER = "migrator_capture"
TRUNCATE_TRIGGER = "migrator_capture_truncate"

_SETUP = (
    "CREATE SCHEMA IF NOT EXISTS {schema}",
    (
        "CREATE TABLE IF NOT EXISTS {changes} (pos bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        'scope text NOT NULL, tbl text NOT NULL, key jsonb NOT NULL, op "char" NOT NULL, '
        "captured_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ),
    "CREATE INDEX IF NOT EXISTS changes_scope_pos ON {changes} (scope, pos)",
    (
        "CREATE TABLE IF NOT EXISTS {captured} (scope text NOT NULL, tbl text NOT NULL, key_columns text[] NOT NULL, "
        "ready boolean NOT NULL DEFAULT false, installed_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (scope, tbl))"
    ),
    # One function for every captured table: its key columns are the trigger's arguments.
    (
        "CREATE OR REPLACE FUNCTION {capture}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp AS $fn$ "
        "DECLARE old_key jsonb := '[]'; new_key jsonb := '[]'; old_row jsonb; new_row jsonb; i int; "
        "  row_scope text := TG_TABLE_SCHEMA; row_table text := TG_TABLE_NAME; "
        "  root oid := pg_partition_root(TG_RELID); "
        "BEGIN "
        # On a partitioned table the trigger fires on the row's partition: the change is the table's.
        "  IF root IS NOT NULL THEN SELECT n.nspname, c.relname INTO row_scope, row_table FROM pg_class c "
        "    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = root; END IF; "
        "  IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); "
        "    FOR i IN 0 .. TG_NARGS - 1 LOOP old_key := old_key || jsonb_build_array(old_row -> TG_ARGV[i]); END LOOP; "
        "    INSERT INTO {changes} (scope, tbl, key, op) "
        "      VALUES (row_scope, row_table, old_key, left(TG_OP, 1)); "
        "  END IF; "
        "  IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); "
        "    FOR i IN 0 .. TG_NARGS - 1 LOOP new_key := new_key || jsonb_build_array(new_row -> TG_ARGV[i]); END LOOP; "
        "    IF TG_OP = 'INSERT' OR new_key IS DISTINCT FROM old_key THEN "
        "      INSERT INTO {changes} (scope, tbl, key, op) "
        "        VALUES (row_scope, row_table, new_key, left(TG_OP, 1)); "
        "    END IF; "
        "  END IF; "
        "  RETURN NULL; "
        "END $fn$"
    ),
    (
        "CREATE OR REPLACE FUNCTION {refuse_truncate}() RETURNS trigger LANGUAGE plpgsql AS $fn$ "
        "BEGIN RAISE EXCEPTION USING ERRCODE = 'object_in_use', MESSAGE = format("
        "'%I.%I is being migrated online (salesflow migrator): TRUNCATE cannot be carried over; "
        "delete the rows instead',"
        " TG_TABLE_SCHEMA, TG_TABLE_NAME); END $fn$"
    ),
)


def _setup_args() -> dict[str, sql.Composable]:
    return {
        "schema": sql.Identifier(CAPTURE_SCHEMA),
        "changes": CHANGES,
        "captured": CAPTURED_TABLES,
        "capture": CAPTURE_FUNCTION,
        "refuse_truncate": REFUSE_TRUNCATE_FUNCTION,
    }


def capture_ready() -> bool:
    return catalog.table_exists(CAPTURE_SCHEMA, "captured_tables")


# Creating and dropping the capture schema take it exclusively, installs shared (tenant workers run in parallel).
SETUP_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('migrator online capture setup', 0))"
SETUP_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtextextended('migrator online capture setup', 0))"


def ensure_capture_schema() -> None:
    with transaction.atomic():
        # Tenant workers install in parallel: CREATE ... IF NOT EXISTS is not safe against itself.
        db.execute(SETUP_LOCK)
        if capture_ready():
            return
        for statement in _SETUP:
            db.execute(sql.SQL(statement).format(**_setup_args()))


def install(scope: str, table: str, key: tuple[str, ...], lock_timeout_ms: int) -> bool:
    """Capture writes to ``scope.table`` from now on; returns False when it already was.

    ``CREATE TRIGGER`` waits for the table's open write transactions (their rows are committed
    before the copy reads, so it sees them) and blocks new ones while it waits: the wait is bounded
    by ``lock_timeout`` and retried.
    """
    ensure_capture_schema()
    if is_captured(scope, table):
        return False
    # A bookkeeping row without its trigger: an earlier attempt captured a table that has been
    # re-created since (a reseed or restore of the legacy schema). Nothing was captured since then, so
    # its copy is not "ready" any more; the copy that follows this install makes it so again.

    installed = False

    def create() -> None:
        nonlocal installed
        # Another worker's drop_capture_schema_if_unused cannot drop it under this install (nor between
        # ensure_capture_schema and here unnoticed: then it is created again).
        db.execute(SETUP_LOCK_SHARED)
        if not capture_ready():
            return
        target = sql.Identifier(scope, table)
        db.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {t} "
                "FOR EACH ROW EXECUTE FUNCTION {fn}({args})"
            ).format(
                trigger=sql.Identifier(TRIGGER),
                t=target,
                fn=CAPTURE_FUNCTION,
                args=sql.SQL(", ").join(sql.Literal(k) for k in key),
            )
        )
        db.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {trigger} BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {fn}()"
            ).format(trigger=sql.Identifier(TRUNCATE_TRIGGER), t=target, fn=REFUSE_TRUNCATE_FUNCTION)
        )
        db.execute(
            sql.SQL(
                "INSERT INTO {} (scope, tbl, key_columns) VALUES (%s, %s, %s) ON CONFLICT (scope, tbl) "
                "DO UPDATE SET key_columns = EXCLUDED.key_columns, ready = false, installed_at = now()"
            ).format(CAPTURED_TABLES),
            [scope, table, list(key)],
        )
        installed = True

    for _ in range(5):
        with_lock_retries(create, lock_timeout_ms, f"install change capture on {scope}.{table}")
        if installed:
            return True
        ensure_capture_schema()
    raise MigrationError(f"could not install change capture on {scope}.{table}: its schema kept being dropped")


def with_lock_retries(work: Callable[[], None], lock_timeout_ms: int, what: str, attempts: int = 20) -> int:
    """Run ``work`` in a transaction whose locks wait at most ``lock_timeout_ms``; retried on timeout.

    Returns the attempts it took. Writers queue behind a waiting lock request, so a short
    timeout is what bounds how long they are held up.
    """
    import time

    from psycopg import errors

    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic():
                db.execute("SELECT set_config('lock_timeout', %s, true)", [f"{lock_timeout_ms}ms"])
                work()
            return attempt
        except Exception as exc:  # Django wraps psycopg's LockNotAvailable in OperationalError
            if not isinstance(exc.__cause__, errors.LockNotAvailable) and not isinstance(exc, errors.LockNotAvailable):
                raise
            time.sleep(min(0.05 * attempt, 0.5))
    raise MigrationError(
        f"could not {what}: its lock was not granted within {lock_timeout_ms} ms in {attempts} attempts "
        "(long transactions on the table); rerun when the load is lower or raise --lock-timeout"
    )


def is_captured(scope: str, table: str) -> bool:
    """Writes to ``scope.table`` are captured: its bookkeeping row and its trigger are both there.

    The trigger is looked up, not assumed from the bookkeeping: a legacy table re-created since an
    earlier attempt (reseeded, restored) has the row and no trigger, and every write to it would go
    uncaptured, so lost to the new tables.
    """
    if not capture_ready():
        return False
    return bool(
        db.fetchvalue(
            sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE scope = %s AND tbl = %s) "
                "AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = {oid} AND tgname = %s)"
            ).format(CAPTURED_TABLES, oid=catalog.RELATION_OID),
            [scope, table, scope, table, TRIGGER],
        )
    )


def _read_bookkeeping(query: sql.Composable, params: list[object] | None = None) -> list[tuple[object, ...]]:
    """Rows of a query on the capture's bookkeeping; none once the capture schema is gone. Another worker
    that starts its scope's two-way sync drops the schema when it was the last scope captured, which may
    fall between the check and the query (a worker copying or validating another tenant's whale)."""
    # Checked first, not left to the query's error: an offline run asks for every tenant, and each miss
    # would be an ERROR in the server's log.
    if not capture_ready():
        return []
    return db.fetchall_unless_undefined(query, params) or []


def captured_tables(scope: str) -> dict[str, bool]:
    """Captured tables of ``scope`` -> whether their copy finished (their changes are applied)."""
    rows = _read_bookkeeping(sql.SQL("SELECT tbl, ready FROM {} WHERE scope = %s").format(CAPTURED_TABLES), [scope])
    return {str(tbl): bool(ready) for tbl, ready in rows}


def captured_scopes() -> list[str]:
    return [
        str(r[0])
        for r in _read_bookkeeping(sql.SQL("SELECT DISTINCT scope FROM {} ORDER BY 1").format(CAPTURED_TABLES))
    ]


def mark_ready(scope: str, table: str) -> None:
    db.execute(
        sql.SQL("UPDATE {} SET ready = true WHERE scope = %s AND tbl = %s").format(CAPTURED_TABLES), [scope, table]
    )


@dataclass
class ApplyStats:
    changes: int = 0  # capture rows consumed
    keys: dict[str, int] = field(default_factory=dict)  # table -> distinct keys re-copied
    rounds: int = 0
    whole_scope_rounds: int = 0  # rounds redone as one transaction (a batch split related changes)


def pending_keys(scope: str) -> dict[str, list[object]]:
    """The keys captured and not yet applied, per ready table of ``scope`` (what the next apply re-copies)."""
    ready = [t for t, is_ready in captured_tables(scope).items() if is_ready]
    rows = db.fetchall(
        sql.SQL("SELECT tbl, jsonb_agg(DISTINCT key) FROM {} WHERE scope = %s AND tbl = ANY(%s) GROUP BY tbl").format(
            CHANGES
        ),
        [scope, ready],
    )
    return {tbl: json.loads(keys) if isinstance(keys, str) else list(keys) for tbl, keys in rows}


def uncaptured(scope: str, tables: list[str]) -> list[str]:
    """Those of ``scope``'s ``tables`` whose capture trigger is missing or disabled."""
    return catalog.tables_without_trigger(scope, tables, TRIGGER)


def _reapply_keys(copy: TableCopy, keys: list[object]) -> int:
    """Make the target rows of ``keys`` the source's current rows (gone from the source: deleted)."""
    types = recopy.key_types(copy.source_schema, copy.source_table, copy.key, copy.schema_catalog)
    payload = json.dumps(keys)
    unmapped = copy.unmapped_counts()
    if unmapped:
        missing = (
            db.fetchone(
                sql.SQL("SELECT {} FROM {} WHERE {}").format(
                    sql.SQL(", ").join(unmapped), copy.from_clause(), recopy.keys_in("s", copy.key, types, KEYS)
                ),
                [payload],
            )
            or ()
        )
        bad = {r.column: n for r, n in zip(copy.remaps, missing, strict=False) if n}
        if bad:
            raise MigrationError(
                f"{copy.source_schema}.{copy.source_table}: "
                + ", ".join(f"{n} changed rows of {c}" for c, n in bad.items())
                + " point at reference rows with no merged id; rerun `migrate_phase sync`"
            )
    upsert, delete = recopy.copy_statements(copy, KEYS)
    written = db.execute(upsert, [payload])
    written += db.execute(delete, [payload])
    return written


def _apply_round(
    scope: str,
    copies: Mapping[str, TableCopy],
    merge: Callable[[], None] | None,
    batch_size: int | None,
    isolate: bool,
    stats: ApplyStats,
) -> int:
    """One batch (``batch_size`` None: every visible change) of ``scope``'s ready tables; returns rows consumed."""
    ready = [t for t, is_ready in captured_tables(scope).items() if is_ready]
    if not ready:
        return 0
    with transaction.atomic():
        if isolate:
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        bound = None
        if batch_size is not None:
            bound = db.fetchvalue(
                sql.SQL("SELECT pos FROM {} WHERE scope = %s AND tbl = ANY(%s) ORDER BY pos OFFSET %s LIMIT 1").format(
                    CHANGES
                ),
                [scope, ready, batch_size - 1],
            )
        consumed = db.fetchall(
            sql.SQL(
                "WITH d AS (DELETE FROM {} WHERE scope = %s AND tbl = ANY(%s) AND (%s::bigint IS NULL OR pos <= %s) "
                "RETURNING tbl, key) SELECT tbl, count(*), jsonb_agg(DISTINCT key) FROM d GROUP BY tbl"
            ).format(CHANGES),
            [scope, ready, bound, bound],
        )
        if merge is not None:
            merge()  # new reference rows first: re-inserted rows may point at them
        db.execute("SET CONSTRAINTS ALL DEFERRED")
        total = 0
        for table, rows, keys in consumed:
            total += int(rows)
            if table in copies:  # reference tables have no copy of their own: the merge carries them
                # Django's cursor hands jsonb back as text
                key_list = json.loads(keys) if isinstance(keys, str) else list(keys)
                _reapply_keys(copies[table], key_list)
                stats.keys[table] = stats.keys.get(table, 0) + len(key_list)
    stats.changes += total
    stats.rounds += 1
    return total


def apply_changes(
    scope: str,
    copies: Mapping[str, TableCopy],
    batch_size: int,
    merge: Callable[[], None] | None = None,
    fence: Callable[[], None] = lambda: None,
) -> ApplyStats:
    """Apply ``scope``'s captured changes until a batch finds fewer than ``batch_size`` (caught up).

    ``copies``: legacy table -> its copy (tables without one are carried by ``merge``).
    """
    stats = ApplyStats()
    while True:
        fence()
        try:
            consumed = _apply_round(scope, copies, merge, batch_size, True, stats)
        except IntegrityError:
            # The batch ended between related changes; all of them at once are consistent.
            stats.whole_scope_rounds += 1
            consumed = _apply_round(scope, copies, merge, None, True, stats)
        if consumed < batch_size:
            return stats


def apply_all_locked(scope: str, copies: Mapping[str, TableCopy], merge: Callable[[], None] | None) -> ApplyStats:
    """Inside the caller's transaction, with the scope's legacy tables locked against writes: everything left."""
    stats = ApplyStats()
    _apply_round(scope, copies, merge, None, False, stats)
    return stats


def remove_capture(scope: str, tables: list[str], schema_catalog: catalog.SchemaCatalog = catalog.NOT_READ) -> None:
    """Triggers off the scope's legacy tables that still exist, its capture rows gone (caller's transaction)."""
    present = schema_catalog.tables_of(scope)
    for table in tables:
        if table in present:
            for trigger in (TRIGGER, TRUNCATE_TRIGGER):
                db.execute(
                    sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                        sql.Identifier(trigger), sql.Identifier(scope, table)
                    )
                )
    if capture_ready():
        db.execute(sql.SQL("DELETE FROM {} WHERE scope = %s").format(CHANGES), [scope])
        db.execute(sql.SQL("DELETE FROM {} WHERE scope = %s").format(CAPTURED_TABLES), [scope])


def drop_capture_schema_if_unused() -> bool:
    """Drop the capture schema once no scope is captured. Tenant workers that start their two-way sync at
    the same time each call this: the checks and the drop hold the setup lock, so one drops and the others
    find it gone (not a relation dropped between their check and their query)."""
    with transaction.atomic():
        db.execute(SETUP_LOCK)
        if not catalog.schema_exists(CAPTURE_SCHEMA):
            return False
        if capture_ready() and db.fetchvalue(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(CAPTURED_TABLES)):
            return False
        # IF EXISTS: a schema dropped by another worker just before this one got the lock can still look
        # present to the check above (this session's catalog cache is brought up to date by a relation lock,
        # not by an advisory one); seen with two tenants' syncs starting at once.
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(CAPTURE_SCHEMA)))
    return True


@dataclass(frozen=True)
class Lag:
    scope: str
    pending: int  # captured and not yet applied
    oldest_seconds: float | None  # age of the oldest of them


def lag() -> list[Lag]:
    """Per captured scope: changes not yet applied and the age of the oldest."""
    if not capture_ready():
        return []
    rows = db.fetchall(
        sql.SQL(
            "SELECT s.scope, count(c.pos), extract(epoch FROM clock_timestamp() - min(c.captured_at)) "
            "FROM (SELECT DISTINCT scope FROM {captured}) s LEFT JOIN {changes} c ON c.scope = s.scope "
            "GROUP BY s.scope ORDER BY s.scope"
        ).format(captured=CAPTURED_TABLES, changes=CHANGES)
    )
    return [Lag(scope, int(n), float(age) if age is not None else None) for scope, n, age in rows]
