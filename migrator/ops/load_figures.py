"""What the load test measured, as verify's ``load_test`` step stores it under ``details["load_test"]``.

The step writes these records with :meth:`LoadTestFigures.to_json` and every reader (the step's own
summary, the dashboard) reads them back with :meth:`LoadTestFigures.from_json`, so the stored JSON has
one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LEGACY, NEW = "legacy", "new"  # the layouts loaded: the legacy tables and the new ones


@dataclass(frozen=True)
class QueryFigures:
    """One key query on one layout: how many ran, their rate and latency percentiles (None: none ran)."""

    queries: int
    qps: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    error: str | None  # the first failure, which stopped this query for its client

    def to_json(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            "qps": self.qps,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueryFigures:
        return cls(data["queries"], data["qps"], data["p50_ms"], data["p95_ms"], data["p99_ms"], data["error"])


@dataclass(frozen=True)
class LayoutFigures:
    """Every key query run on one layout (legacy or new) during ``seconds``."""

    seconds: float
    queries: dict[str, QueryFigures]

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "queries": {name: q.to_json() for name, q in self.queries.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayoutFigures:
        return cls(data["seconds"], {name: QueryFigures.from_json(q) for name, q in data["queries"].items()})


@dataclass
class LoadTestFigures:
    """The load test's settings, what it loaded and, per layout, its figures.

    ``tenants`` and ``elapsed_seconds`` are None (and not stored) when no tenant had the new tables,
    so nothing was loaded.
    """

    clients: int
    seconds: float
    queries_wanted: int
    max_regression_percent: float
    noise_floor_ms: float
    method: str
    layouts: dict[str, LayoutFigures] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tenants: int | None = None
    elapsed_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "clients": self.clients,
            "seconds": self.seconds,
            "queries_wanted": self.queries_wanted,
            "max_regression_percent": self.max_regression_percent,
            "noise_floor_ms": self.noise_floor_ms,
            "method": self.method,
            "layouts": {name: layout.to_json() for name, layout in self.layouts.items()},
            "notes": list(self.notes),
        }
        if self.tenants is not None:
            data["tenants"] = self.tenants
        if self.elapsed_seconds is not None:
            data["elapsed_seconds"] = self.elapsed_seconds
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadTestFigures:
        return cls(
            clients=data["clients"],
            seconds=data["seconds"],
            queries_wanted=data["queries_wanted"],
            max_regression_percent=data["max_regression_percent"],
            noise_floor_ms=data["noise_floor_ms"],
            method=data["method"],
            layouts={name: LayoutFigures.from_json(layout) for name, layout in data["layouts"].items()},
            notes=list(data["notes"]),
            tenants=data.get("tenants"),
            elapsed_seconds=data.get("elapsed_seconds"),
        )
