"""What each step kind stores in its tracking row's ``details`` and other modules read back.

One TypedDict per step kind (or per part several kinds share): the step that writes the details
builds this type, and every reader (a check, rollback, cutover, the reports) reads this type, so a
key has one spelling and one meaning. The stored JSON is these dicts as they are. ``total=False``:
a step stores only what applied (most copies have no legacy time zone, nothing carried, ...).

The engine adds ``message`` (the result's message) to every step's details; a ranged step's rows
carry their bounds under ``range`` (see :mod:`migrator.engine.tracking`): :class:`RowDetails`.

A query that filters on a key inside the JSON (``details__<key>``) names the key by the constant
defined beside its TypedDict, so the spelling is the one the type checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypedDict, cast

# --- what the engine adds to every step's row ----------------------------------------------------------


class RangeBounds(TypedDict):
    """A key range's place in its table's plan and its keys (``KeyRange``; None: unbounded)."""

    index: int
    count: int
    after: int | None
    through: int | None


class RowDetails(TypedDict, total=False):
    """The engine's keys on a step's tracking row, beside the step kind's own."""

    message: str  # the step result's message
    range: RangeBounds  # a range's sub-step row
    excluded_by: str  # a tenant's exclude record: why it was left out


# --- parts several step kinds share ---------------------------------------------------------------------


class TimezoneDetails(TypedDict, total=False):
    """Legacy ``timestamp`` columns read in the legacy application's zone (copy and validate)."""

    legacy_timezone: str | None
    timestamp_columns: list[str]


LEGACY_TIMEZONE: Final = "legacy_timezone"  # TimezoneDetails' key, for queries on the stored JSON


class SequenceDetails(TypedDict, total=False):
    """Where the new table's id sequence continues (copies that keep or issue ids)."""

    sequence_continues_after: int | None
    legacy_sequence_last_value: int | None


class CarriedDetails(TypedDict, total=False):
    """What a tenant table's copy did with the legacy table's own rules and indexes (each an object's
    ``kind``, ``legacy`` name, ``target`` name and ``definition``, or why it was not carried)."""

    constraints_carried: list[dict[str, str]]
    constraints_left_behind: list[dict[str, str]]
    constraints_not_carried: list[dict[str, str]]


class OnlineApplyDetails(TypedDict, total=False):
    """A copy with ``--online``: the changes captured during the copy, applied after it."""

    online: bool
    changes_applied: int


class ReferenceRowsDetails(TypedDict, total=False):
    """A tenant table's copy merged the tenant's reference rows added since the merge steps ran."""

    reference_rows_merged: dict[str, int]  # reference table -> rows mapped
    discarded_variants: list[dict[str, object]]


# --- phase 1 (prepare) ----------------------------------------------------------------------------------


class PreflightDetails(TypedDict):
    """``prepare``'s ``preflight``: the server, the client binaries found, and the disk for the backup."""

    server_version: int
    pg_dump: str
    pg_restore: str
    disk_free: int
    database_size: int


class MigrationsAppliedDetails(TypedDict, total=False):
    """Steps that run Django migrations (``bootstrap``, ``service_schemas``, ``tenant_tables``): which ones
    they applied; ``bootstrap`` also what adopting a legacy ``public.tenants`` did (None: nothing to adopt)."""

    applied: list[str]
    adopted_registry: dict[str, Any] | None


class BackupDetails(TypedDict, total=False):
    """``prepare``'s ``backup`` step: the dump it took (or, in a rehearsal copy, the one it was restored from)."""

    backup: dict[str, Any]  # BackupInfo.as_dict() (migrator.ops.backup)
    legacy_row_writes: int  # what a restore's confirmation counts the writes it would discard from
    rehearsal_copy_of: str  # only in a rehearsal's scratch database: its marker comment


class InspectDetails(TypedDict, total=False):
    """``prepare``'s ``inspect_auth`` and ``register`` steps: the legacy schema's inspection report
    (``tables``: table -> its ``rows``, ...; migrator.ops.inspection) and what else registration found."""

    inspection: dict[str, Any]
    dependents: list[dict[str, str]]  # inspect_auth: the auth tables' dependent objects
    drift: list[dict[str, str]]  # register: the tenant's drift findings
    renamed_from: str  # register: the schema the tenant was renamed from
    renamed_tables: dict[str, str]


INSPECTION: Final = "inspection"  # InspectDetails' key, for queries on the stored JSON


class DiscoverDetails(TypedDict):
    """``prepare``'s ``discover`` step: the tenant schemas it found, and those it left out (with their
    rows and why) or renamed."""

    tenants: list[str]
    invalid_schemas: list[str]
    created_new: list[str]
    excluded_schemas: list[dict[str, object]]
    renamed_schemas: dict[str, str]


# --- phase 3 (data) -------------------------------------------------------------------------------------


class CopyDetails(
    TimezoneDetails, SequenceDetails, CarriedDetails, OnlineApplyDetails, ReferenceRowsDetails, total=False
):
    """``copy_table`` (a tenant's) and ``copy_auth`` steps."""

    batches: int
    deferred: int  # indexes and constraints dropped for the load
    rebuilt: int  # ... and built again after it
    resumed_after: object  # the checkpoint(s) an interrupted attempt's copy resumed from
    ranges: int  # key ranges of a large table
    legacy_table_missing: bool  # the tenant has no such legacy table: nothing was copied


class MergeReferenceDetails(SequenceDetails, total=False):
    """``merge_reference``: a legacy reference table of every tenant merged into the shared one."""

    tenants_merged: int
    rows_added: int
    discarded_variants: list[dict[str, object]]  # conflicting rows a first-wins policy dropped
    tenants_without_table: list[str]
    policy: str


class CopyRangeDetails(TypedDict, total=False):
    """``copy_range``: one key range of a large table's copy."""

    batches: int
    resumed_after: int | None


class ValidateDetails(TimezoneDetails, total=False):
    """``validate``: the comparison of both sides (fingerprints on the row, these beside them)."""

    ranges: int  # compared range by range
    columns_of_another_type: list[str]  # compared in the legacy type's terms
    differing_keys: list[list[object]]  # a sample, when the sides differ
    constraints_missing: list[str]  # indexes or foreign keys not rebuilt or validated


# --- phase 4 (security) ---------------------------------------------------------------------------------


class ServiceRoleDetails(TypedDict):
    """``service_role``: whether the migrator created the role (rollback drops it) or adopted it."""

    created: bool
    adopted: bool
    role_oid: int | None


class TenantGrantsDetails(TypedDict):
    """``tenant_grants``: the roles given USAGE on the tenant schema (rollback revokes it from these only)."""

    usage_granted: list[str]


# --- phase 5 (verify) -----------------------------------------------------------------------------------


class CheckDetails(TypedDict, total=False):
    """A verify check: the problems it found (none: passed) and its findings."""

    problems: list[str]
    schemas: list[str]  # expected_schemas: the schemas found, but the tenants'
    tenant_schemas: int  # ... and how many tenant schemas
    counts: dict[str, Any]  # row_counts (tenant -> table -> rows) and counts_match (table -> rows)
    orm_counts: dict[str, Any]  # tenant_context: the rows the ORM counted in the tenant's context
    load_test: dict[str, Any]  # LoadTestFigures.to_json() (migrator.ops.load_figures)
    refused_by_carried_constraint: str | None  # crud_smoke
    index_used: dict[str, bool]  # index_usage: key lookup -> an index serves it


# --- phase 6 (cutover) ----------------------------------------------------------------------------------


class ArchiveDetails(TypedDict, total=False):
    """``archive_legacy`` (a tenant's) and ``archive_auth``: where the legacy tables went. A scope migrated
    with ``--online`` is not archived by cutover: its legacy tables stay in two-way sync until finalize
    (``online`` and ``two_way`` set, with what the switch to the new tables did: ``attempts``, ...)."""

    archived: dict[str, str]  # legacy table -> where it is now
    sequences: dict[str, SequenceDetails]  # new table -> where its sequence continues
    dependents_carried: list[dict[str, str]]
    legacy_schema_dropped: bool
    online: bool
    two_way: bool
    attempts: int


class OnlineSwitchDetails(TypedDict, total=False):
    """What the online mode's switches store: ``start_two_way_sync`` (data), ``archive_legacy`` and
    ``archive_auth`` (cutover: the new tables declared primary), ``finish_sync`` (finalize) and
    ``stop_sync`` (rollback). ``writes_blocked_ms``: how long the switch held the application's writes.
    The keys it shares with :class:`ArchiveDetails` mean the same (``online``, ``archived``, ...)."""

    online: bool
    two_way: bool
    attempts: int
    archived: dict[str, str]  # finish: legacy table -> where it is now
    dependents_carried: list[dict[str, str]]  # finish
    legacy_schema_dropped: bool  # finish
    sequences: Mapping[str, object]  # table -> the id space's start (start) or the survivor's next id (finish, stop)
    writes_blocked_ms: float
    backlog: int  # start: captured changes applied before the lock
    last_changes: int  # start: those applied under it
    compared: dict[str, str]  # cutover: table -> the fingerprint both sides had
    compared_in_ranges: dict[str, int]  # cutover: legacy table -> key ranges compared
    discarded_reference_variants: list[str]
    triggers_dropped: list[str]  # stop


class LiveCountDetails(TypedDict):
    """``cutover``'s ``mark_live``: tenants live of those registered."""

    live: int
    tenants: int


# --- sync and finalize ----------------------------------------------------------------------------------


class SyncApplyDetails(TypedDict, total=False):
    """``sync``'s ``apply`` (one scope's captured changes) and ``follow`` (rounds until stopped)."""

    changes: int
    keys: dict[str, int]  # apply: table -> distinct keys re-copied
    whole_scope_rounds: int
    rounds: int  # follow


class ObservedDetails(TypedDict):
    """``finalize``'s ``observe``: how long the old application's writes were watched, over how many scopes."""

    observed_seconds: float
    schemas: int


# --- rollback -------------------------------------------------------------------------------------------


class RestoreDetails(TypedDict):
    """``restore_backup``: the database the backup replaced, and the tracking history and the admin
    site's accounts carried over."""

    database: str
    replaced_database: str
    history_rows: int
    history_file: str
    admin_account_rows: int


class CheckBackupDetails(TypedDict):
    """``check_backup``: the backup a restore would use, and the ``pg_restore`` that would read it."""

    backup: dict[str, Any]  # BackupInfo.as_dict() (migrator.ops.backup)
    pg_restore: str


class DroppedDetails(TypedDict):
    """``drop_tenant_tables``: the new tables dropped."""

    dropped: list[str]


class RolledBackDetails(TypedDict):
    """``mark_rolled_back``: the phases whose steps were marked ROLLED_BACK."""

    phases: list[str]


class DropRolesDetails(TypedDict):
    """``drop_roles``: the service roles dropped, and those kept (not the migrator's)."""

    dropped: list[str]
    kept: list[str]


# --- rehearse -------------------------------------------------------------------------------------------


class RehearseDetails(TypedDict):
    """``rehearsal``: the report (RehearsalReport.to_json(), migrator.ops.rehearsal_report)."""

    rehearsal: dict[str, Any]


# --- outside the phases ---------------------------------------------------------------------------------


class DeployDetails(TypedDict):
    """A ``migrate_schemas`` run (a deploy) that failed, or the next one after it: over how many tenant
    schemas, and {schema: reason} of those not migrated."""

    schemas: int
    failed: dict[str, str]


def read_details[Details: Mapping[str, Any]](kind: type[Details], details: Mapping[str, Any] | None) -> Details:
    """A tracking row's (or a step result's) details as ``kind`` says the step wrote them (nothing stored:
    empty). Only the type changes: the stored dict is read as it is."""
    return cast(Details, details or {})
