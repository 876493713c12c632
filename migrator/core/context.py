"""Everything a phase needs to know about the run it is part of."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal, Protocol

from migrator.config import MigratorConfig
from migrator.core.errors import MigrationError
from migrator.tables import LEGACY_TENANT_TABLES
from salesflow.layout import TENANT_ID_RE, tenant_schema_name


@dataclass(frozen=True)
class TenantRef:
    tenant_id: str

    @property
    def schema(self) -> str:
        return tenant_schema_name(self.tenant_id)


def validate_tenant_ids(tenant_ids: list[str]) -> tuple[str, ...]:
    for tenant_id in tenant_ids:
        if not TENANT_ID_RE.match(tenant_id):
            raise MigrationError(
                f"invalid tenant id {tenant_id!r}: tenant ids match ^[a-z][a-z0-9_]{{0,55}}$ "
                "(pass the id without the tenant_ prefix)"
            )
    return tuple(dict.fromkeys(tenant_ids))


def parse_schema_renames(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    """``OLD=NEW`` options -> (old schema, new tenant id) pairs; a malformed or invalid one is an error."""
    renames: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise MigrationError(f"--rename-schema {pair!r}: expected OLD_SCHEMA=NEW_TENANT_ID, e.g. tenant_Acme=acme")
        (new,) = validate_tenant_ids([new])
        if old in renames and renames[old] != new:
            raise MigrationError(
                f"--rename-schema: schema {old!r} is given two new ids ({renames[old]!r}, {new!r}); give one"
            )
        renames[old] = new
    targets = list(renames.values())
    duplicate = next((t for t in targets if targets.count(t) > 1), None)
    if duplicate:
        raise MigrationError(f"--rename-schema: two schemas would become tenant {duplicate!r}; give each its own id")
    return tuple(renames.items())


def parse_table_renames(pairs: list[str]) -> tuple[tuple[str, str, str], ...]:
    """``SCHEMA.TABLE=LEGACY_TABLE`` options (the table as named in that schema, then the registry's name)."""
    renames: dict[tuple[str, str], str] = {}
    for pair in pairs:
        left, sep, new = pair.partition("=")
        schema, dot, old = left.partition(".")
        if not sep or not dot or not schema or not old or not new:
            raise MigrationError(
                f"--rename-table {pair!r}: expected SCHEMA.TABLE=LEGACY_TABLE, e.g. tenant_acme.Contacts=contacts"
            )
        if new not in LEGACY_TENANT_TABLES:
            raise MigrationError(
                f"--rename-table {pair!r}: {new!r} is not a legacy tenant table; choose one of "
                + ", ".join(LEGACY_TENANT_TABLES)
            )
        renames[(schema, old)] = new
    return tuple((schema, old, new) for (schema, old), new in renames.items())


def parse_leave_constraints(values: list[str]) -> tuple[tuple[str, str, str], ...]:
    """``SCHEMA.TABLE.NAME`` options (``*`` and ``?`` match any characters) -> (schema, table, name) patterns."""
    patterns: dict[tuple[str, str, str], None] = {}
    for value in values:
        parts = value.split(".")
        if len(parts) != 3 or not all(parts):
            raise MigrationError(
                f"--leave-constraint {value!r}: expected SCHEMA.TABLE.NAME of a legacy table's constraint or index, "
                "e.g. tenant_acme.contacts.email_has_at or tenant_*.contacts.email_has_at"
            )
        patterns[(parts[0], parts[1], parts[2])] = None
    return tuple(patterns)


ReferenceConflicts = Literal["refuse", "first-wins"]
REFERENCE_CONFLICT_POLICIES: tuple[ReferenceConflicts, ...] = ("refuse", "first-wins")


@dataclass(frozen=True)
class RunOptions:
    """The options of one ``migrate_phase`` run that phases read (a typo is an AttributeError, not None)."""

    reference_conflicts: ReferenceConflicts = "refuse"  # data: tenants disagreeing on a reference row
    validate_only: bool = False  # data: only the validation steps again
    # prepare, data: (schema, legacy table, name) patterns of legacy constraints, indexes and domain
    # checks not carried to the new table on the operator's word (see migrator/ops/carried.py)
    leave_constraints: tuple[tuple[str, str, str], ...] = ()
    restore: bool = False  # rollback: restore the phase-1 backup
    drop_legacy: bool = False  # cutover: drop legacy tables instead of archiving them
    adopt_roles: bool = False  # security: use pre-existing NOLOGIN service roles (rollback never drops them)
    # data (and what re-checks its copies): the zone legacy timestamps are wall-clock times of
    # (None: the database's default timezone setting)
    legacy_timezone: str | None = None
    # tenant_* schemas left out on the operator's word: invalid names (prepare), or any tenant (every
    # phase: the tenant is EXCLUDED, its legacy tables untouched)
    skip_schemas: tuple[str, ...] = ()
    # prepare: (schema, tenant id) pairs: the schema is renamed to tenant_<id> and migrated as that tenant
    rename_schemas: tuple[tuple[str, str], ...] = ()
    # prepare: (schema, table as named, legacy table): a table named in another case is that legacy table
    rename_tables: tuple[tuple[str, str, str], ...] = ()
    # prepare: SCHEMA.TABLE patterns of tables the registry does not know, left where they are
    leave_tables: tuple[str, ...] = ()
    # prepare, cutover: name patterns of objects depending on legacy tables that stay with the archived tables
    leave_dependents: tuple[str, ...] = ()
    render_sql: bool = False  # plans carry the SQL of each step (--plan, -v 3)
    target_database: str | None = None  # rehearse: the scratch database (default <database>_rehearsal)
    replace_target: bool = False  # rehearse: drop an existing scratch database that is not a rehearsal copy
    keep_target: bool = False  # rehearse: keep the scratch database for inspection
    rehearsal_backup: str | None = None  # prepare, in a rehearsal copy only: record this backup instead of dumping
    load_clients: int = 4  # verify: connections of the load test
    load_seconds: float = 10.0  # verify: the load test's time (at most)
    load_max_regression: float = 50.0  # verify: new layout's p95 may be this many percent worse than legacy
    load_queries: int = 1000  # verify: a layout's load ends early once every query ran this often (0: never)
    interactive: bool = True
    # Online migration (docs/online.md).
    online: bool = False  # data: capture writes to each legacy table before copying it, apply them after
    lock_timeout_ms: int = 200  # data/sync/cutover online: longest wait for a lock writers queue behind
    follow: bool = False  # sync: keep applying until SIGINT/SIGTERM
    follow_interval: float = 0.5  # sync --follow: seconds between rounds that found nothing
    # sync --follow ends when this is set (the command sets it on SIGINT/SIGTERM)
    stop: threading.Event = field(default_factory=threading.Event, compare=False)
    force: bool = False  # finalize: drop the compatibility views even though they are still being used
    observe_seconds: float = 5.0  # finalize: how long to watch the compatibility views for use


class RunLock(Protocol):
    """The lock a run holds on its database (migrator/engine/lock.py), as a step that replaces the
    database sees it: a database with a session cannot be renamed, so the lock is let go for the swap
    and taken again on the database that then carries the name."""

    def release(self) -> None: ...

    def reacquire(self) -> None: ...


@dataclass
class MigrationContext:
    """Everything a phase needs to know about the run it is part of.

    ``registered_tenants`` is read from the registry once and kept until ``forget_tenants`` (the
    engine calls it between phases: an earlier phase may have registered tenants).
    """

    config: MigratorConfig
    tenant_filter: tuple[str, ...] = ()
    batch_size: int = 50_000
    jobs: int = 1
    options: RunOptions = field(default_factory=RunOptions)
    lock: RunLock | None = field(default=None, compare=False)  # set by the engine while it holds the lock
    _tenants: list[TenantRef] | None = field(default=None, init=False, repr=False)

    def forget_tenants(self, known: list[TenantRef] | None = None) -> None:
        """Read the registry again on next use, or take ``known`` as the tenants (an empty registry)."""
        self._tenants = known

    @property
    def registered_tenants(self) -> list[TenantRef]:
        if self._tenants is None:
            self._tenants = self._read_registered_tenants()
        return self._tenants

    def _read_registered_tenants(self) -> list[TenantRef]:
        """Registered legacy tenants, narrowed by ``--tenant``; an unknown ``--tenant`` is an error.

        Tenants created new in the target layout (state NEW) have nothing to migrate and are left out.
        """
        from tenants.models import MigrationState, Tenant

        states = dict(Tenant.objects.order_by("tenant_id").values_list("tenant_id", "migration_state"))
        left_out = (MigrationState.NEW, MigrationState.EXCLUDED)
        if not self.tenant_filter:
            return [TenantRef(t) for t, state in states.items() if state not in left_out]
        for tenant_id in self.tenant_filter:
            if tenant_id not in states:
                raise MigrationError(
                    f"unknown tenant {tenant_id!r}: not in public.tenants "
                    "(run `migrate_phase prepare` to register legacy tenants, or check the id)"
                )
            if states[tenant_id] == MigrationState.NEW:
                raise MigrationError(
                    f"tenant {tenant_id!r} was created in the target layout; it has nothing to migrate"
                )
            if states[tenant_id] == MigrationState.EXCLUDED:
                raise MigrationError(
                    f"tenant {tenant_id!r} was left out with --skip-schema; `migrate_phase prepare --tenant "
                    f"{tenant_id}` takes it back"
                )
        return [TenantRef(t) for t in self.tenant_filter]
