"""Everything a phase needs to know about the run it is part of."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal, Protocol

from migrator.config import MigratorConfig
from migrator.core.command_options import (
    non_negative,
    not_an_option,
    option,
    percent,
    positive,
    seconds,
    time_zone_name,
)
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


def _schema_rename_argument(rename: tuple[str, str]) -> str:
    return "=".join(rename)


def _table_rename_argument(rename: tuple[str, str, str]) -> str:
    schema, table, legacy = rename
    return f"{schema}.{table}={legacy}"


def _constraint_argument(pattern: tuple[str, str, str]) -> str:
    return ".".join(pattern)


@dataclass(frozen=True)
class RunOptions:
    """The options of one ``migrate_phase`` run that phases read (a typo is an AttributeError, not None).

    Each field states how the command line gives it (``option``: the command's arguments are built from
    these) or what sets it instead (``not_an_option``); see migrator/core/command_options.py.
    """

    interactive: bool = field(
        default=True,
        metadata=option("--noinput", "--no-input", help="Do not ask for confirmation before destructive steps."),
    )
    reference_conflicts: ReferenceConflicts = field(
        default="refuse",
        metadata=option(
            "--reference-conflicts",
            choices=REFERENCE_CONFLICT_POLICIES,
            help="data: what to do when tenants disagree on a reference row (default refuse); cutover and "
            "finalize of an online migration: first-wins lets a tenant go on whose legacy reference rows, "
            "edited in the online window, differ from the shared ones (the shared values win).",
            example=("first-wins",),
        ),
    )
    validate_only: bool = field(
        default=False, metadata=option("--validate-only", help="data: only run the validation steps again.")
    )
    # data (and what re-checks its copies): None is the database's default timezone setting
    legacy_timezone: str | None = field(
        default=None,
        metadata=option(
            "--legacy-timezone",
            type=time_zone_name,
            metavar="ZONE",
            help="data (and what re-checks its copies: sync, cutover, rollback): the time zone the legacy "
            "application wrote its timestamp (without time zone) values in, e.g. America/New_York; they are "
            "copied into timestamptz columns as instants of that zone. Default: the database's timezone "
            "setting. A tenant copied with one zone is not continued with another.",
            example=("America/New_York",),
        ),
    )
    # (schema, legacy table, name) patterns (see migrator/ops/carried.py)
    leave_constraints: tuple[tuple[str, str, str], ...] = field(
        default=(),
        metadata=option(
            "--leave-constraint",
            metavar="SCHEMA.TABLE.NAME",
            help="prepare, data: do not carry this CHECK, UNIQUE or EXCLUDE constraint, index, foreign key or "
            "domain check of a legacy tenant table to the tenant's new table (recorded as left behind); * matches "
            "any characters, e.g. 'tenant_*.contacts.email_has_at'; repeatable.",
            parse=parse_leave_constraints,
            format_item=_constraint_argument,
            example=("tenant_*.contacts.email_has_at",),
        ),
    )
    restore: bool = field(
        default=False,
        metadata=option(
            "--restore",
            help="rollback: restore the phase-1 backup instead (found through the backup's manifest "
            "in SALESFLOW_BACKUP_DIR if the tracking table is gone); rerun it to finish a "
            "restore that was interrupted.",
        ),
    )
    drop_legacy: bool = field(
        default=False,
        metadata=option(
            "--drop-legacy",
            help="cutover: drop the legacy tables instead of archiving them (asks for confirmation).",
        ),
    )
    adopt_roles: bool = field(
        default=False,
        metadata=option(
            "--adopt-roles",
            help="security: use service roles that already exist (NOLOGIN only) instead of refusing; "
            "rollback then revokes the migration's grants from them but never drops them.",
        ),
    )
    skip_schemas: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "--skip-schema",
            metavar="NAME",
            help="every phase: leave out this tenant_* schema (a tenant, or a schema whose name is not a valid "
            "tenant id) from this and every later phase; its legacy tables stay untouched, it is recorded and "
            "shown as EXCLUDED by status; `prepare --tenant ID` takes a tenant back; repeatable.",
            example=("tenant_Acme",),
        ),
    )
    # (schema, table as named, legacy table)
    rename_tables: tuple[tuple[str, str, str], ...] = field(
        default=(),
        metadata=option(
            "--rename-table",
            metavar="SCHEMA.TABLE=LEGACY",
            help='prepare: the table TABLE of SCHEMA, named in another case (e.g. "Contacts"), is the legacy '
            "table LEGACY: phase 1 renames it to LEGACY and it is migrated as that table; repeatable.",
            parse=parse_table_renames,
            format_item=_table_rename_argument,
            example=("tenant_acme.Contacts=contacts",),
        ),
    )
    leave_tables: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "--leave-table",
            metavar="SCHEMA.TABLE",
            help="prepare: a table the registry does not know that holds rows is left where it is, not "
            "migrated (patterns: '*.notes_2019'); repeatable.",
            example=("*.notes_2019",),
        ),
    )
    leave_dependents: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "--leave-dependent",
            metavar="NAME",
            help="prepare, cutover: an object that depends on a legacy table and that cutover does not carry to "
            "the new table (a view, a function, a rule, ...) stays with the archived legacy table on purpose; NAME "
            "as the drift report spells it, or TABLE.NAME for a grant, trigger or comment on that table only "
            "(e.g. 'contact_types.app_role'); * matches any characters (e.g. 'public.report_*'); repeatable.",
            example=("public.report_*",),
        ),
    )
    # (schema, tenant id): the schema is renamed to tenant_<id> and migrated as that tenant
    rename_schemas: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=option(
            "--rename-schema",
            metavar="OLD=NEW",
            help="prepare: rename the tenant_* schema OLD, whose name is not a valid tenant id, to "
            "tenant_NEW and migrate it as tenant NEW (the old name is recorded); repeatable.",
            parse=parse_schema_renames,
            format_item=_schema_rename_argument,
            example=("tenant_Acme=acme",),
        ),
    )
    target_database: str | None = field(
        default=None,
        metadata=option(
            "--target-database",
            metavar="NAME",
            help="rehearse: the scratch database the phase-1 backup is restored into "
            "(default <database>_rehearsal, on the same server).",
            example=("scratch",),
        ),
    )
    replace_target: bool = field(
        default=False,
        metadata=option(
            "--replace",
            help="rehearse: drop the scratch database if it exists and is not a rehearsal copy "
            "(a rehearsal copy left by an earlier rehearsal is always replaced).",
        ),
    )
    keep_target: bool = field(
        default=False,
        metadata=option(
            "--keep",
            help="rehearse: keep the scratch database (and its service roles) for inspection; "
            "the next rehearsal drops it.",
        ),
    )
    # prepare, in a rehearsal copy only: record this backup instead of dumping
    rehearsal_backup: str | None = field(
        default=None,
        metadata=option(
            "--rehearsal-backup",
            metavar="DUMP",
            hidden=True,
            help="prepare, in the rehearsal's scratch run: record this phase-1 backup instead of dumping.",
            example=("/backups/salesflow-1.dump",),
        ),
    )
    load_clients: int = field(
        default=4,
        metadata=option(
            "--load-clients",
            type=positive,
            help="verify: connections of the load test (default 4), lowered to what the server allows.",
            example=("2",),
        ),
    )
    load_seconds: float = field(
        default=10.0,
        metadata=option(
            "--load-seconds",
            type=seconds,
            help="verify: at most this many seconds of load (default 10, or SALESFLOW_LOAD_SECONDS); each "
            "query runs on the legacy tables, then with the same key on the new ones.",
            example=("2.5",),
        ),
    )
    load_queries: int = field(
        default=1000,
        metadata=option(
            "--load-queries",
            type=non_negative,
            help="verify: a layout's load ends early once every key query ran this many times "
            "(default 1000, or SALESFLOW_LOAD_QUERIES; 0 always runs --load-seconds).",
            example=("0",),
        ),
    )
    load_max_regression: float = field(
        default=50.0,
        metadata=option(
            "--load-max-regression",
            type=percent,
            metavar="PERCENT",
            help="verify: the load test fails when a query's p95 latency on the new tables is more "
            "than PERCENT worse than on the legacy ones (default 50).",
            example=("12.5",),
        ),
    )
    # Online migration (docs/online.md).
    online: bool = field(
        default=False,
        metadata=option(
            "--online",
            help="data: keep the application writing: capture writes to each legacy table before copying it, "
            "apply them after, then keep the legacy and new tables in two-way sync until `finalize` "
            "(see docs/online.md).",
        ),
    )
    lock_timeout_ms: int = field(
        default=200,
        metadata=option(
            "--lock-timeout",
            type=positive,
            metavar="MS",
            help="data --online, finalize, rollback of an online migration: longest wait in milliseconds for a "
            "lock that writers queue behind (default 200; below the server's deadlock_timeout); on timeout the "
            "step's transaction is retried.",
            example=("50",),
        ),
    )
    follow: bool = field(
        default=False,
        metadata=option(
            "--follow",
            help="sync: keep applying captured changes until interrupted (SIGINT/SIGTERM end it cleanly).",
        ),
    )
    force: bool = field(
        default=False,
        metadata=option(
            "--force",
            help="finalize: archive the legacy tables even though the application still writes them.",
        ),
    )
    observe_seconds: float = field(
        default=5.0,
        metadata=option(
            "--observe-seconds",
            type=seconds,
            help="finalize: how long to watch the legacy tables for the application's writes before archiving "
            "them (default 5).",
            example=("0.5",),
        ),
    )
    render_sql: bool = field(default=False, metadata=not_an_option("--plan, or -v 3: plans carry each step's SQL"))
    follow_interval: float = field(
        default=0.5, metadata=not_an_option("sync --follow: seconds between rounds that found nothing (fixed)")
    )
    # sync --follow ends when this is set
    stop: threading.Event = field(
        default_factory=threading.Event,
        compare=False,
        metadata=not_an_option("the command sets it on SIGINT/SIGTERM"),
    )


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
    _schemas: frozenset[str] | None = field(default=None, init=False, repr=False)

    def forget_tenants(self, known: list[TenantRef] | None = None) -> None:
        """Read the registry again on next use, or take ``known`` as the tenants (an empty registry)."""
        self._tenants = known
        self._schemas = None

    @property
    def registered_schemas(self) -> frozenset[str]:
        """The schemas of ``registered_tenants``, to look up (thousands of tenants, each checked against all)."""
        if self._schemas is None:
            self._schemas = frozenset(t.schema for t in self.registered_tenants)
        return self._schemas

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
