"""What the load test measured, as verify's ``load_test`` step stores it under ``details["load_test"]``.

The step writes these records with :meth:`LoadTestFigures.to_json` and every reader (the step's own
summary, the dashboard) reads them back with :meth:`LoadTestFigures.from_json`, so the stored JSON has
one definition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

LEGACY, NEW = "legacy", "new"  # the layouts loaded: the legacy tables and the new ones
OMITTED_WHEN_NONE = ("tenants", "elapsed_seconds")  # LoadTestFigures' fields not stored while nothing was loaded


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
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueryFigures:
        return cls(**data)


@dataclass(frozen=True)
class LayoutFigures:
    """Every key query run on one layout (legacy or new) during ``seconds``."""

    seconds: float
    queries: dict[str, QueryFigures]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

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
        data = asdict(self)
        for unset in [name for name in OMITTED_WHEN_NONE if data[name] is None]:
            del data[unset]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadTestFigures:
        layouts = {name: LayoutFigures.from_json(layout) for name, layout in data["layouts"].items()}
        return cls(**{**data, "layouts": layouts, "notes": list(data["notes"])})
