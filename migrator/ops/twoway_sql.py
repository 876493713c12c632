"""The SQL text of the two-way sync's bookkeeping tables, trigger functions and schema-change guard
(see :mod:`migrator.ops.twoway`). Each statement is a ``psycopg.sql.SQL`` template whose placeholders
:func:`migrator.ops.twoway.ensure_sync_schema` fills with identifiers and literals."""

from __future__ import annotations

SYNC_SCHEMA = "migrator_sync"  # the schema of the sync's bookkeeping and functions
# The end of each row trigger that writes the other side: its writes done, the marker that keeps the other
# side's triggers from carrying them back again is cleared.
END_OF_SYNCING_TRIGGER = """  PERFORM set_config({syncing}, '', true);
  RETURN NULL;
END $fn$
"""

# Changed with any function below: a sync schema made by an earlier release gets them all again.
FUNCTIONS_RELEASE = (
    "salesflow migrator two-way sync, functions of 2026-12-07 (refuse_inexact, refuse_write_rolled_back)"
)

FUNCTIONS = (
    # The generic row trigger: TG_ARGV[0] the key columns (a jsonb array), TG_ARGV[1] the number of
    # copying statements, then those and the deleting ones, each run with the jsonb array of the
    # written keys (old and new) as $1.
    """
CREATE OR REPLACE FUNCTION {schema}.apply_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  key_columns jsonb := TG_ARGV[0]::jsonb; written jsonb := '[]'; k jsonb; r jsonb; c text; i int;
  app_lock_timeout text := current_setting('lock_timeout');
BEGIN
  IF TG_OP <> 'INSERT' THEN
    r := to_jsonb(OLD); k := '[]';
    FOR c IN SELECT jsonb_array_elements_text(key_columns) LOOP k := k || jsonb_build_array(r -> c); END LOOP;
    written := written || jsonb_build_array(k);
  END IF;
  IF TG_OP <> 'DELETE' THEN
    r := to_jsonb(NEW); k := '[]';
    FOR c IN SELECT jsonb_array_elements_text(key_columns) LOOP k := k || jsonb_build_array(r -> c); END LOOP;
    IF NOT written @> jsonb_build_array(k) THEN written := written || jsonb_build_array(k); END IF;
  END IF;
  PERFORM set_config({syncing}, 'on', true);
  -- A long wait here is for the other side's row, held by a writer that came from the other side and
  -- waits for this side's: a deadlock the detector would find after deadlock_timeout (1 s). The first
  -- statement (refuse_crossed_write) ends it at once when it sees it; otherwise it ends sooner than the
  -- detector: one of the two gets lock_not_available and retries. Longer than any wait behind the
  -- migrator's own short locks (--lock-timeout is kept below it), and an application's own
  -- lock_timeout, if it set one, is left alone.
  IF app_lock_timeout = '0' THEN
    PERFORM set_config('lock_timeout', {sync_lock_timeout}, true);
  END IF;
  -- TG_ARGV[1]: how many of the statements after it copy rows over; the rest delete rows gone. An
  -- insert or an update copies; a delete, or an update that changed the key, also deletes: the old key's
  -- row first, so that a unique column it shares with the row under its new key is free for that one.
  IF TG_OP = 'DELETE' OR jsonb_array_length(written) > 1 THEN
    FOR i IN 2 + TG_ARGV[1]::int .. TG_NARGS - 1 LOOP
      EXECUTE TG_ARGV[i] USING written;
    END LOOP;
  END IF;
  IF TG_OP <> 'DELETE' THEN
    FOR i IN 2 .. 1 + TG_ARGV[1]::int LOOP
      EXECUTE TG_ARGV[i] USING written;
    END LOOP;
  END IF;
  PERFORM set_config('lock_timeout', app_lock_timeout, true);
"""
    + END_OF_SYNCING_TRIGGER,
    # Run first by a row trigger, with the lockers (xmax) of the other side's rows it is about to
    # write: when one of them is a transaction that already waits for this one, the two writers came
    # from opposite sides to one row and each holds the row the other needs. Ended at once as the
    # deadlock it is, instead of after the sync's lock timeout (500 ms each time two writers meet).
    # pg_locks is read only when a locker is still running (it locks the server's whole lock table).
    """
CREATE OR REPLACE FUNCTION {schema}.refuse_crossed_write(lockers xid[], what text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  snap pg_snapshot; horizon bigint; mine bigint; running xid[]; holder int; holder_xid bigint; younger boolean;
BEGIN
  IF lockers IS NULL THEN RETURN; END IF;  -- no row of the other side is locked: the common case, at once
  snap := pg_current_snapshot();
  horizon := pg_snapshot_xmax(snap)::text::bigint % 4294967296;
  mine := pg_current_xact_id()::text::bigint % 4294967296;
  -- running: listed in the snapshot, or at or past its horizon (the xids, 32 bits, wrap around)
  running := ARRAY(
    SELECT l FROM unnest(lockers) l
    WHERE l::text::bigint >= 3 AND (
      l::text::bigint IN (SELECT x::text::bigint % 4294967296 FROM pg_snapshot_xip(snap) x)
      OR (l::text::bigint - horizon + 4294967296) % 4294967296 < 2147483648));
  IF cardinality(running) = 0 THEN RETURN; END IF;
  FOR holder, holder_xid IN
    SELECT l.pid, l.transactionid::text::bigint FROM pg_locks l
    WHERE l.locktype = 'transactionid' AND l.granted AND l.pid <> pg_backend_pid() AND l.transactionid = ANY (running)
  LOOP
    -- Two writers that reach this check at the same moment both find the other not waiting yet. The
    -- younger one looks again for a few milliseconds, while the older one goes on to wait for it.
    younger := (mine - holder_xid + 4294967296) % 4294967296 < 2147483648;
    FOR attempt IN 1 .. CASE WHEN younger THEN 10 ELSE 1 END LOOP
      IF pg_backend_pid() = ANY (pg_blocking_pids(holder)) THEN
        RAISE EXCEPTION USING ERRCODE = 'deadlock_detected', MESSAGE = format(
          '%s: a writer from the other side holds this row and waits for this transaction '
          '(salesflow migrator two-way sync)', what), HINT = 'Retry the transaction.';
      END IF;
      IF younger THEN PERFORM pg_sleep(0.001); END IF;
    END LOOP;
  END LOOP;
END $fn$
""",
    """
CREATE OR REPLACE FUNCTION {schema}.refuse_unmapped(missing bigint, what text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF missing > 0 THEN
    RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = format(
      '%s: %s written rows point at reference rows with no shared id (salesflow migrator two-way sync)', what, missing);
  END IF;
END $fn$
""",
    """
CREATE OR REPLACE FUNCTION {schema}.refuse_inexact(inexact bigint, what text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF inexact > 0 THEN
    RAISE EXCEPTION USING ERRCODE = 'data_exception', MESSAGE = format(
      '%s: %s written rows hold values the new table cannot hold exactly (they would be rounded, cut or '
      'rewritten); write values it holds while the salesflow migrator keeps the two in sync', what, inexact);
  END IF;
END $fn$
""",
    # A shared reference id as the tenant's legacy id; a shared row the tenant never had is added
    # to its legacy reference table first (the caller is syncing: that insert is not merged back).
    """
CREATE OR REPLACE FUNCTION {schema}.legacy_reference_id(
  tenant text, ref text, legacy_schema text, legacy_table text, shared_schema text, shared_table text,
  value_columns text[], shared_id bigint) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE found bigint; cols text;
BEGIN
  IF shared_id IS NULL THEN RETURN NULL; END IF;
  SELECT min(m.old_id) INTO found FROM public.migrator_reference_map m
    WHERE m.tenant_id = tenant AND m.reference_table = ref AND m.new_id = shared_id;
  IF found IS NOT NULL THEN RETURN found; END IF;
  PERFORM pg_advisory_xact_lock(hashtextextended(format('%s/%s/%s', tenant, ref, shared_id), 0));
  SELECT min(m.old_id) INTO found FROM public.migrator_reference_map m
    WHERE m.tenant_id = tenant AND m.reference_table = ref AND m.new_id = shared_id;
  IF found IS NOT NULL THEN RETURN found; END IF;
  cols := (SELECT string_agg(format('%I', c), ', ') FROM unnest(value_columns) c);
  BEGIN
    EXECUTE format('INSERT INTO %I.%I (%s) SELECT %s FROM %I.%I WHERE id = $1 RETURNING id',
      legacy_schema, legacy_table, cols, cols, shared_schema, shared_table) INTO found USING shared_id;
    INSERT INTO public.migrator_reference_map (tenant_id, reference_table, old_id, new_id)
      VALUES (tenant, ref, found, shared_id);
  EXCEPTION WHEN unique_violation THEN
    -- Under REPEATABLE READ or SERIALIZABLE the transaction's snapshot predates the one that mapped this
    -- row (it committed while the lock above was awaited): a serialization failure, which the
    -- application retries, not a duplicate key it could not make sense of.
    IF current_setting('transaction_isolation') IN ('repeatable read', 'serializable') THEN
      RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = format(
        'could not serialize access: %s of tenant %s was mapped by a concurrent transaction', ref, tenant);
    END IF;
    RAISE;
  END;
  RETURN found;
END $fn$
""",
    # The single-column foreign keys that reference a table: (the referencing table, qualified and quoted;
    # its column). What points at a reference row, for the two triggers that look before removing one.
    """
CREATE OR REPLACE FUNCTION {schema}.references_to(sch text, tbl text) RETURNS TABLE (referencing text, col text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT c.conrelid::regclass::text, a.attname::text FROM pg_constraint c
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
   WHERE c.contype = 'f' AND c.confrelid = format('%I.%I', sch, tbl)::regclass AND cardinality(c.conkey) = 1
$fn$
""",
    # Whether a row of any table points at a shared reference row: a tenant already past the sync (finalized)
    # or made on the new layout uses shared rows no legacy tenant maps, and a delete would null its rows
    # (ON DELETE SET NULL) with nothing left to notice. One probe of the referencing column's index per
    # referencing table, on the rare delete or recode of a tenant's last use of a row.
    """
CREATE OR REPLACE FUNCTION {schema}.shared_row_in_use(sch text, tbl text, row_id bigint) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  fk record; used boolean;
BEGIN
  FOR fk IN SELECT * FROM {schema}.references_to(sch, tbl) LOOP
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I = $1)', fk.referencing, fk.col) INTO used USING row_id;
    IF used THEN
      RETURN true;
    END IF;
  END LOOP;
  RETURN false;
END $fn$
""",
    # A tenant's legacy reference row written by the old application.
    # TG_ARGV: tenant id, map name, shared schema, shared table, merge key, value columns (jsonb),
    # the tenant's data tables that point at it (jsonb [[new table, legacy table, column], ...]).
    """
CREATE OR REPLACE FUNCTION {schema}.reference_from_legacy() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  tenant text := TG_ARGV[0]; ref text := TG_ARGV[1]; sch text := TG_ARGV[2]; tbl text := TG_ARGV[3];
  merge_key text := TG_ARGV[4]; uses jsonb := TG_ARGV[6]::jsonb;
  cols text := (SELECT string_agg(format('%I', c), ', ') FROM jsonb_array_elements_text(TG_ARGV[5]::jsonb) c);
  o jsonb; r jsonb; u jsonb; old_shared bigint; new_shared bigint; sharers bigint;
BEGIN
  PERFORM set_config({syncing}, 'on', true);
  IF TG_OP <> 'INSERT' THEN
    o := to_jsonb(OLD);
    SELECT m.new_id INTO old_shared FROM public.migrator_reference_map m
      WHERE m.tenant_id = tenant AND m.reference_table = ref AND m.old_id = (o ->> 'id')::bigint;
  END IF;
  IF TG_OP <> 'DELETE' THEN r := to_jsonb(NEW); END IF;
  IF TG_OP = 'UPDATE' AND o -> 'id' = r -> 'id' AND o -> merge_key = r -> merge_key THEN
    -- the same row under the same key with other values: the shared row follows while it is this
    -- tenant's alone; otherwise the tenant differs from the shared row and cutover reports it
    SELECT count(*) INTO sharers FROM public.migrator_reference_map m
      WHERE m.reference_table = ref AND m.new_id = old_shared
      AND NOT (m.tenant_id = tenant AND m.old_id = (o ->> 'id')::bigint);
    IF old_shared IS NOT NULL AND sharers = 0 THEN
      EXECUTE format('UPDATE %I.%I SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%I.%I, $1)) WHERE id = $2',
        sch, tbl, cols, cols, sch, tbl) USING r, old_shared;
    END IF;
  ELSE
    IF TG_OP <> 'INSERT' THEN
      DELETE FROM public.migrator_reference_map m
        WHERE m.tenant_id = tenant AND m.reference_table = ref AND m.old_id = (o ->> 'id')::bigint;
    END IF;
    IF TG_OP <> 'DELETE' THEN
      EXECUTE format('SELECT id FROM %I.%I WHERE %I = ($1 ->> %L)', sch, tbl, merge_key, merge_key)
        INTO new_shared USING r;
      IF new_shared IS NULL THEN
        EXECUTE format('INSERT INTO %I.%I (%s) SELECT %s FROM jsonb_populate_record(NULL::%I.%I, $1) '
          'ON CONFLICT (%I) DO NOTHING RETURNING id', sch, tbl, cols, cols, sch, tbl, merge_key)
          INTO new_shared USING r;
      END IF;
      IF new_shared IS NULL THEN  -- another tenant added the same key meanwhile
        EXECUTE format('SELECT id FROM %I.%I WHERE %I = ($1 ->> %L)', sch, tbl, merge_key, merge_key)
          INTO new_shared USING r;
      END IF;
      INSERT INTO public.migrator_reference_map (tenant_id, reference_table, old_id, new_id)
        VALUES (tenant, ref, (r ->> 'id')::bigint, new_shared);
      IF TG_OP = 'UPDATE' AND new_shared IS DISTINCT FROM old_shared THEN
        -- recoded: the tenant's rows that point at it point at the other shared row now
        FOR u IN SELECT jsonb_array_elements(uses) LOOP
          EXECUTE format('UPDATE %I.%I t SET %I = $1 FROM %I.%I l WHERE l.id = t.id AND l.%I = $2',
            TG_TABLE_SCHEMA, u ->> 0, u ->> 2, TG_TABLE_SCHEMA, u ->> 1, u ->> 2)
            USING new_shared, (r ->> 'id')::bigint;
        END LOOP;
      END IF;
    END IF;
    IF old_shared IS NOT NULL AND old_shared IS DISTINCT FROM new_shared AND NOT EXISTS (
        SELECT 1 FROM public.migrator_reference_map m WHERE m.reference_table = ref AND m.new_id = old_shared)
        AND NOT {schema}.shared_row_in_use(sch, tbl, old_shared) THEN
      -- no tenant has it any more: it goes, as a merge of the legacy rows as they are now would not make it
      EXECUTE format('DELETE FROM %I.%I WHERE id = $1', sch, tbl) USING old_shared;
    END IF;
  END IF;
"""
    + END_OF_SYNCING_TRIGGER,
    # A shared reference row written by the new application: every synced tenant that has it follows.
    # TG_ARGV: map name, legacy reference table, value columns (jsonb).
    """
CREATE OR REPLACE FUNCTION {schema}.reference_from_shared() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  ref text := TG_ARGV[0]; legacy_table text := TG_ARGV[1];
  cols text := (SELECT string_agg(format('%I', c), ', ') FROM jsonb_array_elements_text(TG_ARGV[2]::jsonb) c);
  entry record; fk record;
BEGIN
  PERFORM set_config({syncing}, 'on', true);
  FOR entry IN SELECT m.tenant_id, m.old_id, s.scope FROM public.migrator_reference_map m
      JOIN {scopes} s ON s.tenant_id = m.tenant_id
      WHERE m.reference_table = ref AND m.new_id = OLD.id LOOP
    IF TG_OP = 'UPDATE' THEN
      EXECUTE format('UPDATE %I.%I SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%I.%I, $1)) WHERE id = $2',
        entry.scope, legacy_table, cols, cols, entry.scope, legacy_table) USING to_jsonb(NEW), entry.old_id;
    ELSE
      -- The new side's rows that used it were set NULL by their foreign key (ON DELETE SET NULL); their own
      -- triggers run after this one, so the legacy rows follow here first, or the legacy foreign key would
      -- refuse the delete below.
      FOR fk IN SELECT * FROM {schema}.references_to(entry.scope, legacy_table) LOOP
        EXECUTE format('UPDATE %s SET %I = NULL WHERE %I = $1', fk.referencing, fk.col, fk.col) USING entry.old_id;
      END LOOP;
      EXECUTE format('DELETE FROM %I.%I WHERE id = $1', entry.scope, legacy_table) USING entry.old_id;
    END IF;
  END LOOP;
  IF TG_OP = 'DELETE' THEN
    DELETE FROM public.migrator_reference_map m WHERE m.reference_table = ref AND m.new_id = OLD.id;
  END IF;
"""
    + END_OF_SYNCING_TRIGGER,
    """
CREATE OR REPLACE FUNCTION {schema}.note_legacy_write() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  INSERT INTO {legacy_writes} (scope, tbl) VALUES (TG_ARGV[0], TG_ARGV[1]);
  RETURN NULL;
END $fn$
""",
    """
CREATE OR REPLACE FUNCTION {schema}.refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'object_in_use', MESSAGE = format(
    '%I.%I is kept in two-way sync by the salesflow migrator: TRUNCATE cannot be carried over; delete the rows instead',
    TG_TABLE_SCHEMA, TG_TABLE_NAME);
END $fn$
""",
    # A rolled-back scope's new tables, from the sync's stop until the rollback drops them (TG_ARGV[0]: the
    # legacy table that holds their rows now).
    """
CREATE OR REPLACE FUNCTION {schema}.refuse_write_rolled_back() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction', MESSAGE = format(
    '%I.%I is being rolled back by the salesflow migrator: its rows are in %s now; write there',
    TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]);
END $fn$
""",
)

TABLES = (
    "CREATE SCHEMA IF NOT EXISTS {schema}",
    # A scope in two-way sync: its legacy tables and their new ones (tenant_id: NULL for auth).
    (
        "CREATE TABLE IF NOT EXISTS {scopes} (scope text PRIMARY KEY, tenant_id text, "
        "synced_at timestamptz NOT NULL DEFAULT now(), tables jsonb NOT NULL)"
    ),
    # Written by the application's statements only; UNLOGGED: what finalize watches is recent writes.
    (
        "CREATE UNLOGGED TABLE IF NOT EXISTS {legacy_writes} (scope text NOT NULL, tbl text NOT NULL, "
        "at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ),
    "CREATE INDEX IF NOT EXISTS legacy_writes_at ON {legacy_writes} (at)",
    # The columns of each synced table as the sync's statements name them (see guard_ddl).
    (
        "CREATE TABLE IF NOT EXISTS {synced_columns} (relid oid PRIMARY KEY, scope text NOT NULL, "
        "side text NOT NULL, columns jsonb NOT NULL)"
    ),
)

# Schema changes of a synced table that would break its sync are refused, in the statement's own
# transaction, so a deploy's migration is rolled back whole (never half applied). A new table may
# gain columns an insert can leave out (nullable, or with a database default); nothing else changes
# on either side until finalize (or rollback). The migrator's own DDL runs with salesflow.syncing on.
GUARD = (
    """
CREATE OR REPLACE FUNCTION {schema}.columns_of(rel oid) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT coalesce(jsonb_agg(jsonb_build_array(a.attname, format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum),
                  '[]'::jsonb)
  FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
$fn$
""",
    """
CREATE OR REPLACE FUNCTION {schema}.guard_ddl() RETURNS event_trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE cmd record; synced record; problem text;
BEGIN
  IF current_setting({syncing}, true) = 'on' THEN RETURN; END IF;
  FOR cmd IN SELECT DISTINCT objid, object_identity FROM pg_event_trigger_ddl_commands()
      WHERE object_type IN ('table', 'table column') LOOP
    SELECT * INTO synced FROM {synced_columns} WHERE relid = cmd.objid;
    CONTINUE WHEN NOT FOUND;
    problem := NULL;
    IF synced.side = 'legacy' THEN
      IF {schema}.columns_of(cmd.objid) IS DISTINCT FROM synced.columns THEN
        problem := 'its columns would change';
      END IF;
    ELSE
      SELECT string_agg(format('column %s %s', c ->> 0, CASE WHEN a.attname IS NULL THEN 'removed or renamed'
                                                      ELSE 'retyped' END), ', ')
        INTO problem
        FROM jsonb_array_elements(synced.columns) c
        LEFT JOIN pg_attribute a ON a.attrelid = cmd.objid AND a.attname = c ->> 0 AND NOT a.attisdropped
        WHERE a.attname IS NULL OR format_type(a.atttypid, a.atttypmod) <> c ->> 1;
      IF problem IS NULL THEN
        SELECT string_agg(format('column %s added NOT NULL without a database default', a.attname), ', ')
          INTO problem
          FROM pg_attribute a
          WHERE a.attrelid = cmd.objid AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull
          AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
          AND NOT synced.columns @> jsonb_build_array(
            jsonb_build_array(a.attname::text, format_type(a.atttypid, a.atttypmod)));
      END IF;
    END IF;
    IF problem IS NOT NULL THEN
      RAISE EXCEPTION USING ERRCODE = 'object_in_use', MESSAGE = format(
        '%s is kept in two-way sync by the online migration (salesflow migrator): refused, nothing was changed (%s); '
        'during the window a new table may gain nullable columns or columns with a database default only: '
        'make this change after `migrate_phase finalize`', cmd.object_identity, problem);
    END IF;
  END LOOP;
END $fn$
""",
    """
CREATE OR REPLACE FUNCTION {schema}.guard_drop() RETURNS event_trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE gone record;
BEGIN
  IF current_setting({syncing}, true) = 'on' THEN RETURN; END IF;
  SELECT d.object_identity INTO gone FROM pg_event_trigger_dropped_objects() d
    JOIN {synced_columns} s ON s.relid = d.objid WHERE d.object_type = 'table' LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'object_in_use', MESSAGE = format(
      '%s is kept in two-way sync by the online migration (salesflow migrator): dropping it is refused, nothing '
      'was changed; run `migrate_phase finalize` (or `migrate_phase rollback`) first', gone.object_identity);
  END IF;
END $fn$
""",
)
GUARD_TRIGGERS = (
    "DROP EVENT TRIGGER IF EXISTS salesflow_sync_guard_ddl",
    "DROP EVENT TRIGGER IF EXISTS salesflow_sync_guard_drop",
    (
        "CREATE EVENT TRIGGER salesflow_sync_guard_ddl ON ddl_command_end WHEN TAG IN ('ALTER TABLE') "
        "EXECUTE FUNCTION {schema}.guard_ddl()"
    ),
    "CREATE EVENT TRIGGER salesflow_sync_guard_drop ON sql_drop EXECUTE FUNCTION {schema}.guard_drop()",
)
