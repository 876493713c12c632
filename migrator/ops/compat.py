"""Compatibility views: the legacy table names, left by the online cutover over the new tables.

Old application code keeps reading and writing ``tenant_x.contacts`` (and the rest) after cutover:

- a tenant data view shows the new table's rows with each reference id translated back to the
  tenant's old id (through ``public.migrator_reference_map``); writes go through ``INSTEAD OF``
  triggers that translate the old id to the shared one (an unknown old id is a foreign key error),
  and new ids come from the new table's sequence (the view's ``id`` default);
- a reference view shows the shared rows the tenant had, under its old ids; an ``INSERT`` adds a
  shared row (or maps to the equal one another tenant has) and a map entry, under a new old id from
  the archived legacy table's sequence. Shared rows are one for all tenants since the migration, so
  an ``UPDATE`` or ``DELETE`` through a tenant's view is refused;
- an auth view is a plain projection of the ``auth`` table (same ids), updatable by PostgreSQL itself.

Each view carries :data:`MARKER` as its comment: that is how finalize and rollback find them.

A view has no statistics of its own (the planner replaces it by its query), so each one reads a
one-row *probe* table of its own in ``migrator_compat`` (``WHERE EXISTS (SELECT FROM probe)``, an
init plan run once per statement; its ``INSTEAD OF`` trigger reads it too, and an auto-updatable
view checks it on ``INSERT`` through ``WITH LOCAL CHECK OPTION``): the probe's scans in
``pg_stat_user_tables`` count the statements that used the view, which is what finalize watches.
"""

from __future__ import annotations

import hashlib

from django.db import transaction
from psycopg import sql

from migrator import catalog, db
from migrator.ops.copy import TableCopy
from migrator.tables import ReferenceTable

MARKER = "salesflow migrator compatibility view"
MAP = sql.Identifier("public", "migrator_reference_map")
PROBE_SCHEMA = "migrator_compat"


def function_name(table: str) -> str:
    return f"migrator_compat_{table}"[:63]


def probe_name(schema: str, view: str) -> str:
    """The probe table of ``schema.view`` (a digest keeps long tenant names apart within 63 bytes)."""
    digest = hashlib.sha1(f"{schema}.{view}".encode()).hexdigest()[:8]
    return f"{schema}__{view}"[:54] + "_" + digest


def probe(schema: str, view: str) -> sql.Identifier:
    return sql.Identifier(PROBE_SCHEMA, probe_name(schema, view))


def ensure_probe_schema() -> None:
    """The probe tables' schema, in a transaction of its own before any tenant's switch.

    Not inside the switches: two tenants switched in parallel (``--jobs``) would both create it, or
    both update its privileges ("tuple concurrently updated").
    """
    with transaction.atomic():
        db.execute("SELECT pg_advisory_xact_lock(hashtextextended('migrator compat probe schema', 0))")
        if catalog.schema_exists(PROBE_SCHEMA):
            return
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(PROBE_SCHEMA)))
        # the application's roles read it through the trigger functions (which run as the writer)
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(sql.Identifier(PROBE_SCHEMA)))


def _create_probe(schema: str, view: str) -> sql.Identifier:
    """``schema.view``'s probe table (:func:`ensure_probe_schema` made its schema)."""
    table = probe(schema, view)
    db.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (used boolean NOT NULL DEFAULT true)").format(table))
    db.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(table))
    db.execute(sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(table))
    db.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(table, sql.Literal(f"{schema}.{view}")))
    return table


def _probed(table: sql.Identifier) -> sql.Composed:
    return sql.SQL(" WHERE EXISTS (SELECT FROM {})").format(table)


def _legacy_defaults(schema: str, table: str) -> dict[str, str]:
    """Column -> default expression of the (archived) legacy table, identities left out."""
    rows = db.fetchall(
        "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d "
        "JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
        "JOIN pg_class c ON c.oid = d.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attgenerated = ''",
        [schema, table],
    )
    return dict(rows)


def _sequence_of(schema: str, table: str, column: str = "id") -> str | None:
    return db.fetchvalue(
        "SELECT pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), %s)", [schema, table, column]
    )


def _set_defaults(view: sql.Identifier, archived: tuple[str, str], id_sequence: str | None) -> None:
    """The legacy table's column defaults on the view (so an INSERT naming few columns works as before)."""
    defaults = _legacy_defaults(*archived)
    for column, expression in defaults.items():
        if column == "id":
            continue
        db.execute(
            sql.SQL("ALTER VIEW {} ALTER COLUMN {} SET DEFAULT {}").format(
                view,
                sql.Identifier(column),
                sql.SQL(expression),  # the catalog's own text of the default
            )
        )
    if id_sequence:
        db.execute(
            sql.SQL("ALTER VIEW {} ALTER COLUMN id SET DEFAULT nextval({}::regclass)").format(
                view, sql.Literal(id_sequence)
            )
        )


def _mark(view: sql.Identifier) -> None:
    db.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(view, sql.Literal(MARKER)))


def create_data_view(copy: TableCopy, archived: tuple[str, str], tenant_id: str | None) -> None:
    """``copy``'s legacy name as a view over its target, in the legacy column order."""
    view = copy.source
    legacy_columns = [c.name for c in catalog.columns(*archived)]
    remapped = {r.column: r for r in copy.remaps}
    alias = {c: sql.Identifier("map_" + c) for c in remapped}
    select = sql.SQL(", ").join(
        sql.SQL("{}.old_id AS {}").format(alias[c], sql.Identifier(c))
        if c in remapped
        else sql.SQL("t.{}").format(sql.Identifier(c))
        for c in legacy_columns
    )
    joins = sql.Composed(
        [
            sql.SQL(
                " LEFT JOIN {map} {a} ON {a}.tenant_id = {tenant} AND {a}.reference_table = {ref} "
                "AND {a}.new_id = t.{c}"
            ).format(
                map=MAP,
                a=alias[c],
                tenant=sql.Literal(r.tenant_id),
                ref=sql.Literal(r.reference_table),
                c=sql.Identifier(c),
            )
            for c, r in remapped.items()
        ]
    )
    probe_table = _create_probe(copy.source_schema, copy.source_table)
    db.execute(
        sql.SQL("CREATE VIEW {view} AS SELECT {select} FROM {target} t{joins}{probed}{check}").format(
            view=view,
            select=select,
            target=copy.target,
            joins=joins,
            probed=_probed(probe_table),
            # one table, no join: PostgreSQL updates it by itself, and checks the probe on INSERT too
            check=sql.SQL("" if remapped else " WITH LOCAL CHECK OPTION"),
        )
    )
    _mark(view)
    _set_defaults(view, archived, _sequence_of(copy.target_schema, copy.target_table) if copy.key == ("id",) else None)
    if not remapped:
        return
    declare = sql.SQL(" ").join(sql.SQL("{} bigint;").format(sql.Identifier("new_" + c)) for c in remapped)
    lookups = sql.SQL(" ").join(
        sql.SQL(
            "IF NEW.{c} IS NOT NULL THEN "
            "SELECT m.new_id INTO {v} FROM {map} m WHERE m.tenant_id = {tenant} AND m.reference_table = {ref} "
            "AND m.old_id = NEW.{c}; "
            "IF NOT FOUND THEN RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', "
            "MESSAGE = format('%s.%s = %s: no such row in %s', TG_TABLE_SCHEMA, TG_TABLE_NAME, NEW.{c}, {ref}); "
            "END IF; END IF;"
        ).format(
            c=sql.Identifier(c),
            v=sql.Identifier("new_" + c),
            map=MAP,
            tenant=sql.Literal(r.tenant_id),
            ref=sql.Literal(r.reference_table),
        )
        for c, r in remapped.items()
    )
    columns = [c for c in copy.columns if c in legacy_columns]
    values = sql.SQL(", ").join(
        sql.Identifier("new_" + c) if c in remapped else sql.SQL("NEW.{}").format(sql.Identifier(c)) for c in columns
    )
    body = sql.SQL(
        "DECLARE {declare} BEGIN PERFORM FROM {probe}; "
        "IF TG_OP = 'DELETE' THEN DELETE FROM {target} WHERE id = OLD.id; RETURN OLD; END IF; "
        "{lookups} "
        "IF TG_OP = 'INSERT' THEN INSERT INTO {target} ({cols}) VALUES ({values}); "
        "ELSE UPDATE {target} SET ({cols}) = ROW({values}) WHERE id = OLD.id; END IF; "
        "RETURN NEW; END"
    ).format(
        declare=declare,
        probe=probe_table,
        target=copy.target,
        lookups=lookups,
        cols=db.ident_list(columns),
        values=values,
    )
    _create_trigger(copy.source_schema, copy.source_table, body)


def create_reference_view(scope: str, ref: ReferenceTable, tenant_id: str, archived: tuple[str, str]) -> None:
    """The tenant's legacy reference table as a view of the shared rows it has, under its old ids."""
    view = sql.Identifier(scope, ref.legacy_table)
    legacy_columns = [c.name for c in catalog.columns(*archived)]
    shared = sql.Identifier(ref.shared_schema, ref.table)
    select = sql.SQL(", ").join(
        sql.SQL("m.old_id AS id") if c == "id" else sql.SQL("s.{}").format(sql.Identifier(c)) for c in legacy_columns
    )
    probe_table = _create_probe(scope, ref.legacy_table)
    db.execute(
        sql.SQL(
            "CREATE VIEW {view} AS SELECT {select} FROM {shared} s JOIN {map} m ON m.tenant_id = {tenant} "
            "AND m.reference_table = {ref} AND m.new_id = s.id{probed}"
        ).format(
            view=view,
            probed=_probed(probe_table),
            select=select,
            shared=shared,
            map=MAP,
            tenant=sql.Literal(tenant_id),
            ref=sql.Literal(ref.map_name),
        )
    )
    _mark(view)
    _set_defaults(view, archived, _sequence_of(*archived))
    values = [c for c in legacy_columns if c != "id"]
    key = sql.Identifier(ref.merge_key)
    body = sql.SQL(
        "DECLARE shared_id bigint; BEGIN PERFORM FROM {probe}; "
        "IF TG_OP <> 'INSERT' THEN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', "
        "MESSAGE = format('%s.%s is shared reference data since the migration: change it in %s', "
        "TG_TABLE_SCHEMA, TG_TABLE_NAME, {shared_name}); END IF; "
        "INSERT INTO {shared} ({cols}) VALUES ({new_values}) ON CONFLICT ({key}) DO NOTHING; "
        "SELECT s.id INTO shared_id FROM {shared} s WHERE s.{key} = NEW.{key} AND ROW({s_values}) IS NOT DISTINCT FROM "
        "ROW({new_values}); "
        "IF NOT FOUND THEN RAISE EXCEPTION USING ERRCODE = 'unique_violation', "
        "MESSAGE = format('%s %s exists in %s with other values', {key_name}, NEW.{key}, {shared_name}); END IF; "
        "INSERT INTO {map} (tenant_id, reference_table, old_id, new_id) VALUES ({tenant}, {ref}, NEW.id, shared_id); "
        "RETURN NEW; END"
    ).format(
        probe=probe_table,
        shared_name=sql.Literal(f"{ref.shared_schema}.{ref.table}"),
        shared=shared,
        cols=db.ident_list(values),
        new_values=sql.SQL(", ").join(sql.SQL("NEW.{}").format(sql.Identifier(c)) for c in values),
        s_values=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in values),
        key=key,
        key_name=sql.Literal(ref.merge_key),
        map=MAP,
        tenant=sql.Literal(tenant_id),
        ref=sql.Literal(ref.map_name),
    )
    _create_trigger(scope, ref.legacy_table, body)


def _create_trigger(schema: str, view: str, body: sql.Composable) -> None:
    function = sql.Identifier(schema, function_name(view))
    db.execute(
        sql.SQL("CREATE FUNCTION {} () RETURNS trigger LANGUAGE plpgsql AS {}").format(
            function,
            sql.Literal(db.render(body)),  # a function body is a string constant: no parameters
        )
    )
    db.execute(
        sql.SQL(
            "CREATE TRIGGER migrator_compat INSTEAD OF INSERT OR UPDATE OR DELETE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION {}()"
        ).format(sql.Identifier(schema, view), function)
    )


def compat_views(schema: str) -> list[str]:
    """The compatibility views in ``schema``."""
    # Through pg_depend's index on the schema: pg_class has no index on relnamespace, and a join on the
    # schema's name reads every relation of the database (5-70 ms per call at 1,000 tenants; per tenant in cutover).
    rows = db.fetchall(
        "SELECT c.relname FROM pg_depend d JOIN pg_class c ON c.oid = d.objid "
        "WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = to_regnamespace(quote_ident(%s)) "
        "AND d.refobjsubid = 0 AND d.classid = 'pg_class'::regclass "
        "AND c.relkind = 'v' AND obj_description(c.oid, 'pg_class') = %s ORDER BY 1",
        [schema, MARKER],
    )
    return [r[0] for r in rows]


def drop_views(schema: str) -> list[str]:
    """Drop ``schema``'s compatibility views and their trigger functions (caller's transaction)."""
    views = compat_views(schema)
    for view in views:
        db.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(schema, view)))
        db.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(schema, function_name(view))))
        db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(probe(schema, view)))
    if catalog.schema_exists(PROBE_SCHEMA) and not db.fetchvalue(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s)",
        [PROBE_SCHEMA],
    ):
        db.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(PROBE_SCHEMA)))
    return views


def all_compat_views() -> list[tuple[str, str]]:
    """(schema, view) of every compatibility view in the database."""
    rows = db.fetchall(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'v' AND obj_description(c.oid, 'pg_class') = %s ORDER BY 1, 2",
        [MARKER],
    )
    return [(schema, view) for schema, view in rows]


def usage_counters() -> dict[tuple[str, str], int | None]:
    """(schema, view) -> statements that used it so far (probe scans plus trigger function calls when
    ``track_functions`` counts them); None for a view without a probe (its use cannot be observed)."""
    # a transaction's statistics are a snapshot taken at their first read: take a fresh one
    db.execute("SELECT pg_stat_clear_snapshot()")
    counters: dict[tuple[str, str], int | None] = {}
    for schema, view in all_compat_views():
        probe_relid = db.fetchvalue("SELECT to_regclass(%s)::oid", [db.render(probe(schema, view))])
        if probe_relid is None:
            counters[(schema, view)] = None
            continue
        scans = db.fetchvalue(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relid = %s",
            [probe_relid],
        )
        calls = db.fetchvalue(
            "SELECT f.calls FROM pg_stat_user_functions f WHERE f.schemaname = %s AND f.funcname = %s",
            [schema, function_name(view)],
        )
        counters[(schema, view)] = int(scans or 0) + int(calls or 0)
    return counters
