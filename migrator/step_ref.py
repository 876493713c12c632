"""A step by name (:class:`StepRef`: its phase and its kind) and the one format of its tracking key.

The tracking key (``migration_id`` of ``public.schema_migrations``) is ``phase/tenant/kind[/target]``:
tenant ``*`` for a phase-wide step; a key range of a large table's step (a sub-step row) adds the
range's index after the target. Databases hold these strings, so :meth:`StepKey.migration_id` writes
them exactly as every earlier version did and :meth:`StepKey.parse` reads them back.

The lowest layer of the migrator: the tracking models, the engine, the operations and the phases all
name steps through it. A phase declares the steps others read as ``StepRef`` class attributes; the
code below the phases receives them as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = "/"
# The tenant part of a phase-wide step's key.
ANY_TENANT = "*"


@dataclass(frozen=True, slots=True)
class StepRef:
    """A kind of step of a phase, e.g. ``StepRef("data", "validate")``."""

    phase: str
    kind: str

    def key(self, tenant_id: str | None = None, target: str = "") -> str:
        """The tracking key of this kind of step for ``tenant_id`` (None: phase-wide) and ``target``."""
        return StepKey(self, tenant_id, target).migration_id


@dataclass(frozen=True, slots=True)
class StepKey:
    """A step's tracking key, in parts: which step (``ref``), whose (``tenant_id``, None: phase-wide),
    on what (``target``), and for a key range's sub-step row its 1-based ``range_index``."""

    ref: StepRef
    tenant_id: str | None = None
    target: str = ""
    range_index: int | None = None

    @property
    def migration_id(self) -> str:
        parts = [self.ref.phase, self.tenant_id or ANY_TENANT, self.ref.kind]
        # A range's key always has its target part (empty or not) before the index.
        if self.target or self.range_index is not None:
            parts.append(self.target)
        if self.range_index is not None:
            parts.append(str(self.range_index))
        return SEPARATOR.join(parts)

    def range(self, kind: str, index: int) -> StepKey:
        """The key of range ``index`` of this step, recorded as a sub-step of kind ``kind``."""
        return StepKey(StepRef(self.ref.phase, kind), self.tenant_id, self.target, index)

    @classmethod
    def parse(cls, migration_id: str) -> StepKey:
        """The parts of a step's key (not a range's: a target may hold the separator, e.g. a backup path)."""
        parts = migration_id.split(SEPARATOR, 3)
        if len(parts) < 3 or not all(parts[:3]):
            raise ValueError(f"not a step key: {migration_id!r}")
        phase, tenant, kind = parts[:3]
        target = parts[3] if len(parts) > 3 else ""
        return cls(StepRef(phase, kind), None if tenant == ANY_TENANT else tenant, target)
