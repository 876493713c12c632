"""The rehearsal's report, as the ``rehearse`` phase stores it under ``details["rehearsal"]``.

The phase writes it with :meth:`RehearsalReport.to_json`; the command's output and the dashboard
read it back with :meth:`RehearsalReport.from_json`, so the stored JSON has one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LegacyVolume:
    """Tenant schemas holding legacy tenant-data tables, and their rows: what the projection scales by."""

    tenants: int
    rows: int

    def to_json(self) -> dict[str, int]:
        return {"tenants": self.tenants, "rows": self.rows}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LegacyVolume:
        return cls(int(data["tenants"]), int(data["rows"]))


@dataclass(frozen=True)
class FailedStep:
    step: str  # its migration id in the scratch database
    error: str

    def to_json(self) -> dict[str, str]:
        return {"step": self.step, "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FailedStep:
        return cls(data["step"], data["error"])


@dataclass
class PhaseRun:
    """One phase of the scratch run. ``rows_per_second`` is worked out from the run's own figures unless
    given (a stored report keeps the rate it recorded)."""

    phase: str
    ok: bool
    seconds: float
    steps: int = 0
    rows_moved: int = 0
    failed: list[FailedStep] = field(default_factory=list)
    error: str | None = None  # the command's own error line (e.g. nothing could run)
    rows_per_second: float | None = None

    def __post_init__(self) -> None:
        if self.rows_per_second is None and self.rows_moved and self.seconds > 0:
            self.rows_per_second = round(self.rows_moved / self.seconds, 1)

    @property
    def first_failure(self) -> FailedStep:
        """The step that failed first, or the phase itself when the command failed before any step."""
        return self.failed[0] if self.failed else FailedStep(self.phase, str(self.error))

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "steps": self.steps,
            "rows_moved": self.rows_moved,
            "rows_per_second": self.rows_per_second,
            "failed": [f.to_json() for f in self.failed],
            "error": self.error,
            "peak_lag_seconds": None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhaseRun:
        return cls(
            phase=data["phase"],
            ok=bool(data["ok"]),
            seconds=float(data["seconds"]),
            steps=int(data["steps"]),
            rows_moved=int(data["rows_moved"]),
            failed=[FailedStep.from_json(f) for f in data["failed"]],
            error=data["error"],
            rows_per_second=data["rows_per_second"],
        )


@dataclass(frozen=True)
class PhaseProjection:
    """A phase's rehearsal time scaled to the live volume: expected, and the range around it."""

    phase: str
    scaled_by: str  # "rows" or "tenants"
    expected_seconds: float
    low_seconds: float
    high_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "scaled_by": self.scaled_by,
            "expected_seconds": self.expected_seconds,
            "low_seconds": self.low_seconds,
            "high_seconds": self.high_seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhaseProjection:
        return cls(
            data["phase"], data["scaled_by"], data["expected_seconds"], data["low_seconds"], data["high_seconds"]
        )


@dataclass(frozen=True)
class Projection:
    row_ratio: float
    tenant_ratio: float
    phases: list[PhaseProjection]
    total_expected_seconds: float
    total_low_seconds: float
    total_high_seconds: float
    complete: bool  # every rehearsed phase ran and passed
    assumptions: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "row_ratio": self.row_ratio,
            "tenant_ratio": self.tenant_ratio,
            "phases": [p.to_json() for p in self.phases],
            "total_expected_seconds": self.total_expected_seconds,
            "total_low_seconds": self.total_low_seconds,
            "total_high_seconds": self.total_high_seconds,
            "complete": self.complete,
            "assumptions": list(self.assumptions),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Projection:
        return cls(
            row_ratio=data["row_ratio"],
            tenant_ratio=data["tenant_ratio"],
            phases=[PhaseProjection.from_json(p) for p in data["phases"]],
            total_expected_seconds=data["total_expected_seconds"],
            total_low_seconds=data["total_low_seconds"],
            total_high_seconds=data["total_high_seconds"],
            complete=bool(data["complete"]),
            assumptions=list(data["assumptions"]),
        )


@dataclass(frozen=True)
class RunSettings:
    """The options the scratch run was given that bear on its duration."""

    jobs: int
    batch_size: int
    tenants: list[str]
    online: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "batch_size": self.batch_size, "tenants": list(self.tenants), "online": self.online}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSettings:
        return cls(int(data["jobs"]), int(data["batch_size"]), list(data["tenants"]), bool(data["online"]))


@dataclass(frozen=True)
class RehearsalReport:
    ok: bool
    source_database: str
    target_database: str
    kept: bool
    backup_path: str
    backup_created_at: Any  # as the backup's manifest gives it
    options: RunSettings
    phases: list[PhaseRun]
    not_run: list[str]
    seconds: float
    rehearsed_volume: LegacyVolume
    live_volume: LegacyVolume
    projection: Projection
    cleaned_up_before: list[str]
    roles_dropped: list[str]
    notes: list[str]

    @property
    def first_failed(self) -> PhaseRun | None:
        return next((p for p in self.phases if not p.ok), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source_database": self.source_database,
            "target_database": self.target_database,
            "kept": self.kept,
            "backup": {"path": self.backup_path, "created_at": self.backup_created_at},
            "options": self.options.to_json(),
            "phases": [p.to_json() for p in self.phases],
            "not_run": list(self.not_run),
            "seconds": self.seconds,
            "rehearsed_volume": self.rehearsed_volume.to_json(),
            "live_volume": self.live_volume.to_json(),
            "projection": self.projection.to_json(),
            "cleaned_up_before": list(self.cleaned_up_before),
            "roles_dropped": list(self.roles_dropped),
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RehearsalReport:
        return cls(
            ok=bool(data["ok"]),
            source_database=data["source_database"],
            target_database=data["target_database"],
            kept=bool(data["kept"]),
            backup_path=data["backup"]["path"],
            backup_created_at=data["backup"]["created_at"],
            options=RunSettings.from_json(data["options"]),
            phases=[PhaseRun.from_json(p) for p in data["phases"]],
            not_run=list(data["not_run"]),
            seconds=float(data["seconds"]),
            rehearsed_volume=LegacyVolume.from_json(data["rehearsed_volume"]),
            live_volume=LegacyVolume.from_json(data["live_volume"]),
            projection=Projection.from_json(data["projection"]),
            cleaned_up_before=list(data["cleaned_up_before"]),
            roles_dropped=list(data["roles_dropped"]),
            notes=list(data["notes"]),
        )
