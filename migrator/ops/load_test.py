"""Phase 5's load test: the application's key queries from several connections, on the legacy tables
and then on the new ones, on the same tenants and keys; latency percentiles per query and layout.

A threaded client (one psycopg connection per client thread) rather than ``pgbench``: it needs no
client tools (the embedded setup has none of pgbench's scripts' per-statement percentiles either),
and it times each query alone, without the ``SET LOCAL ROLE`` / ``search_path`` that put a client
in a tenant's context as the application does. Every transaction is rolled back.

The legacy tables are only read. They are the live application's until cutover, and a write into
them, even one rolled back, leaves something behind: the values ``nextval`` hands out are never
given back, the table's own triggers run (and whatever they do outside the transaction: a sequence
of an audit table, a ``dblink``, a notification queue), and in online mode the change capture's
trigger runs and draws capture positions. It also fails on what the legacy tables of an old database
hold (a sequence behind the ids inserted explicitly, a generated or enum column the write names).
A copy of a legacy table (``CREATE TEMP TABLE ... (LIKE ...)``) would avoid all that but is not the
legacy table: none of its triggers or foreign keys, indexes of another size, and with ``INCLUDING
DEFAULTS`` its ids still drawn from the legacy sequence; its figure would be no baseline. So the write
is measured on the new tables only, where the rows it inserts are rolled back and the ids it draws
are the new tables' own (gaps in their sequences, as after any rolled-back insert), and it is judged
by whether it works there, not against a legacy figure.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from migrator import db
from migrator.config import MigratorConfig
from migrator.core.errors import MigrationError
from migrator.ops import twoway
from migrator.ops.load_figures import LEGACY, NEW, LayoutFigures, LoadTestFigures, QueryFigures
from migrator.tables import TableKind, legacy_table

LAYOUTS = (LEGACY, NEW)
KEYS_PER_TENANT = 50
# A p95 at most this much above the legacy one is not a regression: on a busy machine the p95 of
# millisecond queries moves by one or two milliseconds between two runs of the same layout (measured
# +1.3 ms on identical plans), while a key lookup that lost its index on a table of real size costs
# tens of milliseconds more (150k contacts: a sequential scan of 15-30 ms).
NOISE_FLOOR_MS = 5.0
CONTACTS, ACTIVITIES = "contacts", "activities"
# Tenants the load runs on: the application's latency on a hundred tenants' tables is its latency on
# ten thousand's, and sampling keys from every tenant would cost two queries each.
MAX_TENANTS_LOADED = 100

WRITE = "contact insert and update"
# name -> (legacy tenant-data table it reads or writes, statements). Table names are filled in per layout;
# the write's statements are made per tenant from its new table's columns (see write_statements).
KEY_QUERIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "contact by email": (CONTACTS, ("SELECT id, first_name, last_name, company FROM {table} WHERE email = %(email)s",)),
    "activities of a contact": (
        ACTIVITIES,
        ("SELECT id, subject, due_at FROM {table} WHERE contact_id = %(contact_id)s ORDER BY due_at",),
    ),
    "upcoming activities": (
        ACTIVITIES,
        ("SELECT id, subject, due_at FROM {table} WHERE due_at >= %(due_at)s ORDER BY due_at LIMIT 20",),
    ),
    WRITE: (CONTACTS, ()),
}
# The layouts a query runs on: the write never touches the legacy tables (see the module's docstring).
QUERY_LAYOUTS: dict[str, tuple[str, ...]] = {name: (NEW,) if name == WRITE else LAYOUTS for name in KEY_QUERIES}
# The column the write's update sets (to its own value) when the tenant's table lets it be written.
UPDATED_COLUMN = "company"


@dataclass(frozen=True)
class TenantKeys:
    """Keys sampled once from a tenant's data and used on both layouts."""

    schema: str
    emails: list[str]
    contact_ids: list[int]
    due_dates: list[datetime]

    def pick(self, rng: random.Random) -> dict[str, Any]:
        return {
            "email": rng.choice(self.emails) if self.emails else "nobody@example.invalid",
            "contact_id": rng.choice(self.contact_ids) if self.contact_ids else 0,
            "due_at": rng.choice(self.due_dates) if self.due_dates else datetime.now(UTC),
            "inserted": None,  # the key the write's insert returned (none: nothing to copy)
        }


@dataclass
class QueryStats:
    latencies_ms: list[float] = field(default_factory=list)
    error: str | None = None

    def summary(self, seconds: float) -> QueryFigures:
        ordered = sorted(self.latencies_ms)

        def percentile(p: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))], 3)

        return QueryFigures(
            queries=len(ordered),
            qps=round(len(ordered) / seconds, 1) if seconds > 0 else None,
            p50_ms=percentile(50),
            p95_ms=percentile(95),
            p99_ms=percentile(99),
            error=self.error,
        )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(autocommit: bool = False) -> psycopg.Connection[Any]:
    conn = db.connect_like_django("salesflow-migrator-load-test", autocommit=True)
    # Online: the rolled-back writes on the new tables are not carried to the legacy ones (two-way sync).
    conn.execute(twoway.SKIP_SYNC_FOR_SESSION)
    conn.autocommit = autocommit
    return conn


def table_name(layout: str, legacy_name: str) -> str:
    entry = legacy_table(legacy_name, TableKind.TENANT_DATA)
    return entry.legacy_table if layout == LEGACY else entry.table


def service_role(layout: str, legacy_name: str, config: MigratorConfig) -> str | None:
    """New tables are used through their service's role; the legacy application had one login for all."""
    return None if layout == LEGACY else config.service_role(legacy_table(legacy_name, TableKind.TENANT_DATA).service)


def tenants_with_tables(schemas: Sequence[str], layout: str) -> list[str]:
    names = [table_name(layout, CONTACTS), table_name(layout, ACTIVITIES)]
    with connect() as conn:
        rows = conn.execute(
            # Each name pair looked up through to_regclass: keyed by schema, whatever the catalog statistics.
            "SELECT s.nspname FROM unnest(%s::text[]) s(nspname) CROSS JOIN unnest(%s::text[]) t(relname) "
            "JOIN pg_class c ON c.oid = to_regclass(format('%%I.%%I', s.nspname, t.relname)) "
            "WHERE c.relkind IN ('r', 'p') GROUP BY s.nspname HAVING count(*) = %s",
            [list(schemas), names, len(names)],
        ).fetchall()
    found = {row[0] for row in rows}
    return [schema for schema in schemas if schema in found]


def copied_columns(schemas: Sequence[str], legacy_name: str) -> dict[str, list[str]]:
    """Schema -> the columns of its new ``legacy_name`` table the write copies from an existing row.

    Left out: generated columns (only DEFAULT may be written to them), identity columns GENERATED
    ALWAYS, and every column of a unique index, the key included (a copy would collide; they take
    their default). Enum and domain columns are copied: an existing row's value is one their type
    and checks accept."""
    entry = legacy_table(legacy_name, TableKind.TENANT_DATA)
    found: dict[str, list[str]] = {schema: [] for schema in schemas}
    with connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT s.nspname, a.attname FROM unnest(%s::text[]) s(nspname) "
            "JOIN pg_attribute a ON a.attrelid = to_regclass(format('%%I.%%I', s.nspname, %s::text)) "
            "WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' AND a.attidentity <> 'a' "
            "AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisunique "
            "AND a.attnum = ANY (i.indkey)) ORDER BY s.nspname, a.attnum",
            [list(schemas), entry.table],
        ).fetchall()
    for schema, column in rows:
        found[schema].append(column)
    return found


def write_statements(schemas: Sequence[str]) -> dict[str, tuple[sql.Composed, ...]]:
    """Schema -> the write on its new contacts table: a copy of a sampled contact inserted (the values
    of an existing row fit whatever types, domains and checks the tenant's columns have), then updated.

    The key takes its default, so the insert draws from the new table's own sequence or identity."""
    entry = legacy_table(CONTACTS, TableKind.TENANT_DATA)
    table, key = sql.Identifier(entry.table), sql.Identifier(entry.key[0])
    statements = {}
    for schema, columns in copied_columns(schemas, CONTACTS).items():
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        insert = (
            sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {t} WHERE {k} = %(contact_id)s RETURNING {k}")
            if columns
            else sql.SQL("INSERT INTO {t} DEFAULT VALUES RETURNING {k}")
        ).format(t=table, c=names, k=key)
        updated = UPDATED_COLUMN if UPDATED_COLUMN in columns else next(iter(columns), None)
        update = (
            ()
            if updated is None
            else (
                sql.SQL("UPDATE {t} SET {c} = {c} WHERE {k} = %(inserted)s").format(
                    t=table, c=sql.Identifier(updated), k=key
                ),
            )
        )
        statements[schema] = (insert, *update)
    return statements


def spread(schemas: Sequence[str], most: int) -> list[str]:
    """At most ``most`` of ``schemas``, evenly spaced (the first included), in their order."""
    if len(schemas) <= most:
        return list(schemas)
    return [schemas[index * len(schemas) // most] for index in range(most)]


def sample_keys(schemas: Sequence[str], layout: str) -> list[TenantKeys]:
    """A few contacts (email, id) and due dates per tenant, from the layout whose tables hold the data."""
    keys = []
    contacts, activities = table_name(layout, CONTACTS), table_name(layout, ACTIVITIES)
    # autocommit: a tenant's tables are not kept locked while the next tenants are sampled
    with connect(autocommit=True) as conn:
        for schema in schemas:
            table = contacts
            try:
                found = conn.execute(
                    sql.SQL("SELECT id, email FROM {} WHERE email IS NOT NULL ORDER BY random() LIMIT %s").format(
                        sql.Identifier(schema, contacts)
                    ),
                    [KEYS_PER_TENANT],
                ).fetchall()
                table = activities
                # dates a client can hold as values: not infinity, nor a year past 9999 or before 1
                due = conn.execute(
                    sql.SQL(
                        "SELECT due_at FROM {} WHERE due_at BETWEEN '0001-01-02' AND '9999-12-30' "
                        "ORDER BY random() LIMIT %s"
                    ).format(sql.Identifier(schema, activities)),
                    [KEYS_PER_TENANT],
                ).fetchall()
            except psycopg.Error as exc:
                raise MigrationError(
                    f"{schema}.{table}: the load test's keys could not be read ({first_line(exc)}); "
                    f"fix the table or leave the tenant out with --tenant"
                ) from exc
            keys.append(TenantKeys(schema, [r[1] for r in found], [r[0] for r in found], [r[0] for r in due]))
    return keys


class Load:
    """``clients`` threads running the key queries until the deadline or enough samples.

    Each client runs a query with a key on the legacy tables and then the same query with the same
    key on the new ones: both layouts are measured under the same load at the same moments, so a
    busy machine slows both alike instead of whichever layout ran during the busy spell.
    """

    def __init__(
        self,
        layouts: tuple[str, ...],
        tenants: list[TenantKeys],
        config: MigratorConfig,
        clients: int,
        seconds: float,
        queries_wanted: int,
        writes: dict[str, tuple[sql.Composed, ...]],
    ) -> None:
        self.layouts = layouts
        self.tenants = tenants
        self.clients = clients
        self.seconds = seconds
        self.per_client = math.ceil(queries_wanted / clients) if queries_wanted else 0
        # name -> the layouts it runs on, in order
        self.runs_on = {
            name: tuple(layout for layout in layouts if layout in QUERY_LAYOUTS[name]) for name in KEY_QUERIES
        }
        self.statements = {
            (layout, name): tuple(
                sql.SQL(text).format(table=sql.Identifier(table_name(layout, legacy))) for text in texts
            )
            for name, (legacy, texts) in KEY_QUERIES.items()
            for layout in self.runs_on[name]
        }
        self.writes = writes  # schema -> the write's statements on its new table
        self.roles = {
            (layout, name): service_role(layout, KEY_QUERIES[name][0], config) for layout, name in self.statements
        }
        self.stats: dict[tuple[str, str], QueryStats] = {key: QueryStats() for key in self.statements}
        self.lock = threading.Lock()
        self.errors: list[str] = []

    def run(self) -> tuple[dict[str, dict[str, QueryFigures]], float]:
        started = time.monotonic()
        deadline = started + self.seconds
        threads = [
            threading.Thread(target=self._client, args=(index, deadline), name=f"load-{index}")
            for index in range(self.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        figures = {
            layout: {
                name: self.stats[(layout, name)].summary(elapsed) for name, on in self.runs_on.items() if layout in on
            }
            for layout in self.layouts
        }
        return figures, elapsed

    def _client(self, index: int, deadline: float) -> None:
        rng = random.Random(index)
        mine: dict[tuple[str, str], list[float]] = {key: [] for key in self.statements}
        failed: dict[tuple[str, str], str] = {}
        try:
            with connect() as conn:
                # Rows are read, not used: dates stay text, so an 'infinity' or a year past 9999 that the
                # application stores does not fail a query the server answered.
                for name in ("date", "timestamp", "timestamptz"):
                    conn.adapters.register_loader(name, TextLoader)
                first = True
                while time.monotonic() < deadline:
                    live = [
                        name
                        for name, layouts in self.runs_on.items()
                        if not any((layout, name) in failed for layout in layouts)
                        and not (self.per_client and len(mine[(layouts[-1], name)]) >= self.per_client)
                    ]
                    if not live:
                        break
                    for name in live:
                        tenant = rng.choice(self.tenants)
                        params = tenant.pick(rng)
                        for layout in self.runs_on[name]:
                            try:
                                elapsed = self._once(conn, layout, name, tenant, params)
                            except psycopg.Error as exc:
                                conn.rollback()
                                # The tenant's table: a real database's tenants differ, one may fail alone.
                                table = table_name(layout, KEY_QUERIES[name][0])
                                failed[(layout, name)] = f"{tenant.schema}.{table}: {first_line(exc)}"
                                break
                            if not first:  # the first round warms caches and plans; it is not measured
                                mine[(layout, name)].append(elapsed)
                    first = False
        except psycopg.Error as exc:
            with self.lock:
                self.errors.append(f"load client {index} could not run: {first_line(exc)}")
        with self.lock:
            for key, latencies in mine.items():
                self.stats[key].latencies_ms += latencies
                if key in failed and self.stats[key].error is None:
                    self.stats[key].error = failed[key]

    def _once(
        self, conn: psycopg.Connection[Any], layout: str, name: str, tenant: TenantKeys, params: dict[str, Any]
    ) -> float:
        """One query in the tenant's context, timed alone, then rolled back; milliseconds."""
        # The transaction's BEGIN and the tenant's context in one round trip (a pipeline): a query of a
        # fraction of a millisecond otherwise costs the server and this client three round trips more.
        # The role 'none' is the session's own (SET ROLE NONE), for the legacy tables.
        with conn.pipeline():
            conn.execute(
                "SELECT set_config('search_path', %s, true), set_config('role', %s, true)",
                [tenant.schema, self.roles[(layout, name)] or "none"],
            )
        statements = self.writes[tenant.schema] if name == WRITE else self.statements[(layout, name)]
        started = time.perf_counter()
        for statement in statements:
            cur = conn.execute(statement, params)
            if cur.description is not None:
                rows = cur.fetchall()
                if rows and name == WRITE:
                    params = {**params, "inserted": rows[0][0]}
        elapsed = (time.perf_counter() - started) * 1000
        conn.rollback()
        return elapsed


def run_load_test(
    config: MigratorConfig,
    schemas: Sequence[str],
    clients: int,
    seconds: float,
    queries_wanted: int,
    max_regression: float,
) -> tuple[list[str], LoadTestFigures]:
    """Load on the legacy tables (where they still exist) and the new ones; problems and figures."""
    new_tenants = tenants_with_tables(schemas, NEW)
    legacy_tenants = [s for s in tenants_with_tables(schemas, LEGACY) if s in new_tenants]
    details = LoadTestFigures(
        clients=clients,
        seconds=seconds,
        queries_wanted=queries_wanted,
        max_regression_percent=max_regression,
        noise_floor_ms=NOISE_FLOOR_MS,
        method="threaded client, each query on the legacy tables then on the new ones with the same key; "
        "the write on the new tables only",
    )
    if not new_tenants:
        return ["no tenant has the new tables to load"], details
    tenants = legacy_tenants or new_tenants
    keys = sample_keys(spread(tenants, MAX_TENANTS_LOADED), LEGACY if legacy_tenants else NEW)
    details.tenants = len(keys)
    if len(keys) < len(tenants):
        details.notes.append(f"{len(keys)} of the {len(tenants)} tenants loaded, spread over them in name order")
    if not legacy_tenants:
        details.notes.append("the legacy tables are gone (after cutover): the new layout was loaded alone")
    else:
        details.notes.append(
            f"{WRITE} runs on the new tables only: the legacy tables are read, never written (a write there "
            "draws their sequences and fires their triggers even when rolled back)"
        )
    writes = write_statements([k.schema for k in keys])
    load = Load(LAYOUTS if legacy_tenants else (NEW,), keys, config, clients, seconds, queries_wanted, writes)
    figures, elapsed = load.run()
    details.elapsed_seconds = round(elapsed, 3)
    problems = list(load.errors)
    for layout, queries in figures.items():
        details.layouts[layout] = LayoutFigures(round(elapsed, 3), queries)
        problems += [f"{name} failed on the {layout} tables: {f.error}" for name, f in queries.items() if f.error]
    if legacy_tenants:
        problems += regressions(figures[LEGACY], figures[NEW], max_regression)
    return problems, details


def regressions(legacy: dict[str, QueryFigures], new: dict[str, QueryFigures], max_regression: float) -> list[str]:
    found = []
    for name, figures in new.items():
        before = legacy[name].p95_ms if name in legacy else None
        after = figures.p95_ms
        if before is None or after is None:
            continue
        if after > before * (1 + max_regression / 100) and after - before > NOISE_FLOOR_MS:
            worse = (after / before - 1) * 100 if before else math.inf
            found.append(
                f"{name}: p95 {after:.2f} ms on the new tables against {before:.2f} ms on the legacy ones "
                f"(+{worse:.0f} %, at most +{max_regression:g} % allowed)"
            )
    return found
