"""How phase 1's dump fits the server's lock table: one ``pg_dump``, or parts that read one snapshot.

pg_dump takes ACCESS SHARE on every table it dumps in its first transaction and holds it to the end;
with ``--jobs`` each worker locks every table it dumps again, in its own transaction. All of them
share the server's ``max_locks_per_transaction x (max_connections + max_prepared_transactions)``
slots: 6,400 on a default server, which runs out at about 1,200 legacy tenants (five tables each).

Past that the dump is split. The first part is everything but the tenant schemas; then come the
tenant schemas in groups whose tables fit. Each part is a ``pg_dump`` of its own that holds only its
own locks, and every part reads the snapshot a transaction of the migrator exports and holds open
until the last part is written (``pg_dump --snapshot``): together they are the database at one
moment, as a single dump would be. A restore replays the parts in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from migrator import db
from migrator.core.errors import MigrationError
from salesflow.layout import TENANT_SCHEMA_PREFIX

# Share of the lock table a dump may take: the server's other sessions need slots too.
DUMP_LOCK_SHARE = 0.8
# pg_dump's pattern for the schemas the tenant parts hold (the first part leaves them out)
TENANT_SCHEMA_PATTERN = TENANT_SCHEMA_PREFIX + "*"


@dataclass(frozen=True)
class LockBudget:
    """The tables a dump locks and the slots of the server's lock table."""

    tables: int
    locks_per_transaction: int
    connections: int
    held: int = 0  # slots the server's sessions hold now (another database's included)

    @property
    def slots(self) -> int:
        return self.locks_per_transaction * self.connections

    @property
    def allowed(self) -> int:
        return max(0, int(self.slots * DUMP_LOCK_SHARE) - self.held)


def lock_budget() -> LockBudget:
    row = db.fetchone(
        "SELECT (SELECT count(*) FROM pg_class c WHERE c.relkind IN ('r', 'p', 'm', 'f') "
        "AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)), "
        "current_setting('max_locks_per_transaction')::int, "
        "current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int, "
        # fast-path locks take no slot of the shared table
        "(SELECT count(*) FROM pg_locks WHERE NOT fastpath)"
    )
    return LockBudget(*(int(v) for v in row or (0, 0, 0, 0)))


def tenant_schema_tables() -> list[tuple[str, int]]:
    """Every ``tenant_*`` schema (valid name or not, as the first part's pattern leaves out) and the
    tables pg_dump would lock in it, in name order."""
    rows = db.fetchall(
        "SELECT n.nspname, count(c.oid) FROM pg_namespace n "
        "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'm', 'f') "
        "WHERE starts_with(n.nspname, %s) GROUP BY n.nspname ORDER BY n.nspname",
        [TENANT_SCHEMA_PREFIX],
    )
    return [(str(name), int(tables)) for name, tables in rows]


@dataclass(frozen=True)
class DumpPlan:
    """``jobs`` for each pg_dump; ``tenant_parts`` empty for one dump of everything, else the tenant
    schemas of each part after the first (which holds everything else)."""

    jobs: int
    tenant_parts: tuple[tuple[str, ...], ...] = ()

    @property
    def parts(self) -> int:
        return 1 + len(self.tenant_parts) if self.tenant_parts else 1


def plan_dump(
    requested_jobs: int, budget: LockBudget, tenant_schemas: list[tuple[str, int]], max_part_tables: int | None = None
) -> DumpPlan:
    """One dump while its tables fit the lock table (parallel while the workers' locks fit too), else parts.

    Parts are dumped with one job each: what they lock is what bounds them, and at that many tenants
    a dump's time goes to the per-table catalog work of small tables, which workers do not share.
    ``max_part_tables`` caps the tenant parts below what the server allows (an operator's choice; tests);
    the first part and a tenant schema of more tables than that are dumped whole.
    """
    limit = min(budget.allowed, max_part_tables) if max_part_tables else budget.allowed
    if budget.tables <= limit:
        fits_parallel = 2 * budget.tables <= budget.allowed
        return DumpPlan(jobs=max(1, requested_jobs) if fits_parallel else 1)
    others = budget.tables - sum(tables for _schema, tables in tenant_schemas)
    biggest = max(tenant_schemas, key=lambda item: item[1], default=("", 0))
    if others > budget.allowed or biggest[1] > budget.allowed:  # a part of one schema (or of the rest) at most
        what = "outside the tenant schemas" if others > budget.allowed else f"in schema {biggest[0]}"
        count = others if others > budget.allowed else biggest[1]
        needed = int(count / DUMP_LOCK_SHARE / max(1, budget.connections)) + 1
        raise MigrationError(
            f"pg_dump must lock the {count} tables {what} at once, more than the server's lock table leaves room "
            f"for ({budget.slots} slots): set max_locks_per_transaction to at least {needed} (now "
            f"{budget.locks_per_transaction}), restart PostgreSQL, then rerun the phase"
        )
    parts: list[tuple[str, ...]] = []
    current: list[str] = []
    current_tables = 0
    for schema, tables in tenant_schemas:
        weight = max(1, tables)  # an empty schema is still an object to dump
        if current and current_tables + weight > limit:
            parts.append(tuple(current))
            current, current_tables = [], 0
        current.append(schema)
        current_tables += weight
    if current:
        parts.append(tuple(current))
    return DumpPlan(jobs=1, tenant_parts=tuple(parts))


def schema_pattern(name: str) -> str:
    """A pg_dump ``--schema`` pattern that matches exactly ``name`` (quoted: no wildcard, no case folding)."""
    return '"' + name.replace('"', '""') + '"'
