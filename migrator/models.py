"""Tracking tables of the migrator, in ``public``."""

from __future__ import annotations

import operator
from functools import reduce
from typing import Self

from django.db import models
from django.db.models import Exists, OuterRef, Q

from migrator.step_ref import SEPARATOR, StepRef


class Status(models.TextChoices):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"


# The record of each ``migrate_schemas`` run over the tenant schemas (a deploy): its failed schemas in
# ``details["failed"]``. Not a phase: no runner plans it, status and the deploy gate read the newest.
DEPLOY = StepRef("deploy", "migrate_schemas")
# Not a step's key (no tenant part): databases hold it so since deploys were first recorded.
DEPLOY_KEY = SEPARATOR.join((DEPLOY.phase, DEPLOY.kind))


class MigrationRecordQuerySet(models.QuerySet["MigrationRecord"]):
    def latest_attempts(self) -> Self:
        """Rows that are the newest attempt of their step (an anti-join on the (migration_id, attempt) index).

        A retry is a new row, so older attempts are history: every "where does this step stand"
        question reads these rows only.
        """
        newer = MigrationRecord.objects.filter(migration_id=OuterRef("migration_id"), attempt__gt=OuterRef("attempt"))
        return self.filter(~Exists(newer))

    def of(self, *steps: StepRef) -> Self:
        """The records of these kinds of steps."""
        return self.filter(of_steps(*steps))

    def latest_backup(self, backup: StepRef) -> MigrationRecord | None:
        """The record of the newest completed ``backup`` step (phase 1's): the backup a restore uses."""
        return self.of(backup).filter(status=Status.COMPLETED).order_by("-completed_at").first()


def of_steps(*steps: StepRef) -> Q:
    """Records of any of these kinds of steps (none: no record)."""
    if not steps:
        return Q(pk__in=[])
    return reduce(operator.or_, (Q(phase=step.phase, step=step.kind) for step in steps))


class MigrationRecord(models.Model):
    """One attempt at one step of a phase (``public.schema_migrations``, the plan's table, extended).

    Invariants:
    - ``(migration_id, attempt)`` is unique; a retry is a new row with ``attempt + 1``: history is
      never overwritten. The only later change to a finished row is COMPLETED -> ROLLED_BACK when a
      rollback undoes what the step did.
    - COMPLETED means the step ran *and* its own verification passed; FAILED rows keep the reason
      in ``error_message``.
    - RUNNING rows exist only while their process holds the migrator lock; a RUNNING row found by a
      later run is an interrupted attempt and is closed as FAILED before the step is retried.
    """

    migration_id = models.CharField(max_length=200, help_text="Step key: phase/tenant/step/table.")
    description = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    error_message = models.TextField(null=True, blank=True)

    phase = models.CharField(max_length=20)
    phase_number = models.PositiveSmallIntegerField(null=True, blank=True)
    tenant_id = models.CharField(max_length=63, null=True, blank=True, help_text="Empty for phase-wide steps.")
    step = models.CharField(max_length=40, help_text="Kind of step, e.g. copy_table.")
    target = models.CharField(max_length=200, blank=True, help_text="Table or object the step works on.")
    attempt = models.PositiveIntegerField(default=1)
    rows_expected = models.BigIntegerField(null=True, blank=True)
    rows_copied = models.BigIntegerField(null=True, blank=True)
    checkpoint = models.BigIntegerField(null=True, blank=True, help_text="Highest id committed so far.")
    source_fingerprint = models.CharField(max_length=100, null=True, blank=True)
    target_fingerprint = models.CharField(max_length=100, null=True, blank=True)
    duration = models.DurationField(null=True, blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)

    objects = MigrationRecordQuerySet.as_manager()

    class Meta:
        db_table = "schema_migrations"
        ordering = ["-id"]
        verbose_name = "migration record"
        constraints = [
            models.UniqueConstraint(fields=["migration_id", "attempt"], name="schema_migrations_attempt_uniq"),
            models.CheckConstraint(condition=models.Q(status__in=Status.values), name="schema_migrations_status_valid"),
            models.CheckConstraint(condition=models.Q(attempt__gte=1), name="schema_migrations_attempt_positive"),
        ]
        indexes = [
            models.Index(fields=["phase", "tenant_id"], name="schema_migrations_phase_idx"),
            models.Index(fields=["status"], name="schema_migrations_status_idx"),
            models.Index(fields=["migration_id", "-attempt"], name="schema_migrations_latest_idx"),
            # the admin's "last step of each tenant"
            models.Index(fields=["tenant_id", "-started_at"], name="schema_migrations_tenant_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.migration_id} #{self.attempt} {self.status}"


class ReferenceMapping(models.Model):
    """Old (per-tenant) id -> new (shared) id of a merged reference table.

    Invariant: for each (tenant, reference table, old id) exactly one new id; phase 3 writes it in
    the same transaction as the merged rows, so a resumed run finds either both or neither.
    """

    tenant_id = models.CharField(max_length=63)
    reference_table = models.CharField(max_length=63)
    old_id = models.BigIntegerField()
    new_id = models.BigIntegerField()

    class Meta:
        db_table = "migrator_reference_map"
        ordering = ["tenant_id", "reference_table", "old_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant_id", "reference_table", "old_id"], name="migrator_reference_map_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}.{self.reference_table}: {self.old_id} -> {self.new_id}"


class DeferredConstraint(models.Model):
    """An index or foreign key dropped for a bulk load, to be rebuilt after it.

    Invariant: a row exists exactly while the object is dropped: it is written in the transaction
    that drops the object and deleted in the one that rebuilds it, so a killed load never loses the
    definition.
    """

    class Kind(models.TextChoices):
        INDEX = "INDEX"
        FOREIGN_KEY = "FOREIGN_KEY"

    schema_name = models.CharField(max_length=63)
    table_name = models.CharField(max_length=63)
    name = models.CharField(max_length=63)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    definition = models.TextField(help_text="pg_get_indexdef / pg_get_constraintdef output.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "migrator_deferred_constraints"
        ordering = ["schema_name", "table_name", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["schema_name", "table_name", "name"], name="migrator_deferred_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.schema_name}.{self.table_name}: {self.name}"


class Disposition(models.TextChoices):
    """What the migrator does with a way a tenant's legacy tables differ from the expected shape."""

    CARRIED = "CARRIED", "carried over exactly"
    DECISION = "DECISION", "needs a decision"
    DECIDED = "DECIDED", "decided by an option"
    REFUSED = "REFUSED", "refused"


class FindingKind(models.TextChoices):
    MISSING_TABLE = "missing table"
    NAME_CASE = "name differs in case"
    UNKNOWN_TABLE = "unknown table with rows"
    EXTRA_COLUMN = "extra column"
    MISSING_COLUMN = "missing column"
    TYPE = "column type"
    NULLABILITY = "nullability"
    DEFAULT = "default"
    GENERATED = "generated column"
    COLLATION = "collation"
    ENUM = "enum type"
    DOMAIN = "domain type"
    PRIMARY_KEY = "primary key"
    CONSTRAINT = "constraint"
    INDEX = "index"
    PARTITIONED = "partitioned table"
    INHERITED = "inheritance child"
    UNLOGGED = "unlogged table"
    SEQUENCE = "sequence"
    SHARED_SEQUENCE = "shared sequence"
    # Objects that depend on a legacy table (issue: dependents keep working after cutover).
    VIEW = "view"
    MATERIALIZED_VIEW = "materialized view"
    FUNCTION = "function"
    FUNCTION_BY_NAME = "function (found by name)"
    FOREIGN_KEY_FROM = "foreign key from another table"
    TRIGGER = "trigger"
    RULE = "rule"
    POLICY = "row-level security policy"
    ROW_SECURITY = "row-level security"
    PUBLICATION = "publication"
    STATISTICS = "statistics object"
    GRANT = "grant"
    COLUMN_GRANT = "column grant"
    COMMENT = "comment"


class DriftFinding(models.Model):
    """One way one tenant's legacy tables differ from the shape the table registry expects.

    Invariants: phase 1 writes a tenant's findings in one transaction that first deletes the tenant's
    earlier ones, so the rows of a tenant are always one inspection's; a tenant with a finding whose
    disposition is DECISION or REFUSED is not registered (its register step fails naming the finding).
    DECIDED findings name the option that decided them (``decided_by``).
    """

    tenant_schema = models.CharField(max_length=63)
    legacy_table = models.CharField(max_length=63)
    kind = models.CharField(max_length=40, choices=FindingKind.choices)
    object_name = models.CharField(max_length=200, blank=True, help_text="Column, constraint, index or table.")
    detail = models.TextField(blank=True)
    disposition = models.CharField(max_length=20, choices=Disposition.choices)
    action = models.TextField(blank=True, help_text="What the migrator does, or the option that decides it.")
    decided_by = models.CharField(max_length=200, blank=True)
    inspected_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "migrator_drift_findings"
        ordering = ["tenant_schema", "legacy_table", "kind", "object_name"]
        indexes = [
            models.Index(fields=["tenant_schema", "disposition"], name="migrator_drift_tenant_idx"),
            models.Index(fields=["kind"], name="migrator_drift_kind_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(disposition__in=Disposition.values), name="migrator_drift_disposition_valid"
            ),
        ]

    def __str__(self) -> str:
        where = f"{self.tenant_schema}.{self.legacy_table}" + (f".{self.object_name}" if self.object_name else "")
        return f"{where}: {self.kind} ({self.get_disposition_display()})"
