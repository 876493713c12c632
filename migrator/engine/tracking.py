"""Writes the tracking rows of ``public.schema_migrations``; the runner is its only user.

Every write here commits at once (autocommit), so the table always shows what is happening,
even while a step's own transaction is open on another connection.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable

from django.utils import timezone

from migrator.core.steps import Step, StepResult
from migrator.models import MigrationRecord, Status

HOST = socket.gethostname()


def latest_records(phase: str, keys: Iterable[str] | None = None) -> dict[str, MigrationRecord]:
    """The newest attempt of every step of ``phase`` (one query)."""
    rows = MigrationRecord.objects.filter(phase=phase)
    if keys is not None:
        rows = rows.filter(migration_id__in=list(keys))
    return {row.migration_id: row for row in rows.latest_attempts()}


def close_interrupted(phase: str | None = None) -> int:
    """RUNNING rows (of ``phase``, or of every phase) belong to a run that died: the caller holds the
    lock, so no live process can own them. Close them as FAILED."""
    rows = MigrationRecord.objects.filter(status=Status.RUNNING)
    if phase is not None:
        rows = rows.filter(phase=phase)
    return rows.update(
        status=Status.FAILED,
        completed_at=timezone.now(),
        error_message="interrupted: the process running this step ended before it finished; rerun the phase to resume",
    )


def ensure_pending(steps: list[Step], latest: dict[str, MigrationRecord]) -> dict[str, MigrationRecord]:
    """Give every step a PENDING row to start from: reuse a PENDING latest attempt, else add attempt + 1."""
    new_rows = []
    for step in steps:
        previous = latest.get(step.key)
        if previous is not None and previous.status == Status.PENDING:
            continue
        new_rows.append(
            MigrationRecord(
                migration_id=step.key,
                description=step.description,
                status=Status.PENDING,
                phase=step.phase,
                phase_number=step.phase_number,
                tenant_id=step.tenant_id,
                step=step.kind,
                target=step.target,
                attempt=(previous.attempt + 1) if previous else 1,
                host=HOST,
                pid=os.getpid(),
            )
        )
    MigrationRecord.objects.bulk_create(new_rows, batch_size=1000)
    return latest_records(steps[0].phase, [s.key for s in steps]) if steps else {}


def start(record: MigrationRecord) -> MigrationRecord:
    record.status = Status.RUNNING
    record.started_at = timezone.now()
    record.host = HOST
    record.pid = os.getpid()
    record.save(update_fields=["status", "started_at", "host", "pid"])
    return record


def start_many(records: list[MigrationRecord]) -> None:
    """``start`` for a batch of steps, in one statement."""
    now = timezone.now()
    MigrationRecord.objects.filter(pk__in=[r.pk for r in records]).update(
        status=Status.RUNNING, started_at=now, host=HOST, pid=os.getpid()
    )
    for record in records:
        record.status, record.started_at, record.host, record.pid = Status.RUNNING, now, HOST, os.getpid()


def complete_many(done: list[tuple[MigrationRecord, StepResult]]) -> None:
    """``finish`` as COMPLETED for a batch of steps, in one statement (they write no checkpoints to keep)."""
    if not done:
        return
    now = timezone.now()
    for record, result in done:
        record.status = Status.COMPLETED
        record.completed_at = now
        record.duration = now - (record.started_at or now)
        record.error_message = None
        _store_result(record, result)
    fields = ["status", "completed_at", "duration", "error_message", "details"]
    fields += ["rows_expected", "rows_copied", "source_fingerprint", "target_fingerprint"]
    MigrationRecord.objects.bulk_update([record for record, _result in done], fields)


def _store_result(record: MigrationRecord, result: StepResult | None) -> None:
    if result is None:
        return
    for field in ("rows_expected", "rows_copied", "source_fingerprint", "target_fingerprint"):
        value = getattr(result, field)
        if value is not None:
            setattr(record, field, value)
    record.details = {**record.details, **result.details}
    if result.message:
        record.details["message"] = result.message


def finish(record: MigrationRecord, status: Status, result: StepResult | None, error: str | None = None) -> None:
    # The step may have written checkpoints to this row meanwhile: keep them.
    fresh = MigrationRecord.objects.get(pk=record.pk)
    fresh.status = status
    fresh.completed_at = timezone.now()
    fresh.duration = fresh.completed_at - (fresh.started_at or fresh.completed_at)
    fresh.error_message = error
    _store_result(fresh, result)
    fresh.save()


def save_checkpoint(record_id: int, checkpoint: int | None, rows_copied: int) -> None:
    """Called inside a batch's transaction, so the checkpoint commits with the batch."""
    MigrationRecord.objects.filter(pk=record_id).update(checkpoint=checkpoint, rows_copied=rows_copied)


def save_expected(record_id: int, rows_expected: int) -> None:
    """The source row count, as soon as a copy has counted it: a running step then shows copied / expected."""
    MigrationRecord.objects.filter(pk=record_id).update(rows_expected=rows_expected)


def mark_rolled_back(phases: Iterable[str], tenant_ids: list[str] | None = None) -> int:
    """Attempts whose effects a rollback undid become ROLLED_BACK, so the next run does those steps again.

    Failed and pending attempts are marked too (their partial work is gone as well; the error text
    stays). The backup step stays COMPLETED: its dump still holds the data as it was before.
    """
    rows = MigrationRecord.objects.filter(
        phase__in=list(phases), status__in=[Status.COMPLETED, Status.FAILED, Status.PENDING]
    ).exclude(step="backup")
    if tenant_ids is not None:
        rows = rows.filter(tenant_id__in=tenant_ids)
    return rows.update(status=Status.ROLLED_BACK)
