"""A step by name (:class:`StepRef`: its phase and its kind) and the one format of its tracking key.

The tracking key (``migration_id`` of ``public.schema_migrations``) is ``phase/tenant/kind[/target]``:
tenant ``*`` for a phase-wide step; a key range of a large table's step (a sub-step row) adds the
range's index after the target. Databases hold these strings, so :meth:`StepKey.migration_id` writes
them exactly as every earlier version did and :meth:`StepKey.parse` reads them back.

What a step works on is a :class:`Target`: a name (a table, a schema, a role, a database, a backup's
path), for a legacy auth table's validation in the ``auth`` namespace (``auth.<table>``, apart from a
reference table of the same name). Its text is the target part of the key and the tracking row's
``target`` column.

The lowest layer of the migrator: the tracking models, the engine, the operations and the phases all
name steps through it. A phase declares the steps others read as ``StepRef`` class attributes; the
code below the phases receives them as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = "/"
# The tenant part of a phase-wide step's key.
ANY_TENANT = "*"
# The namespace of the legacy auth tables phase 3 validates (their keys are phase-wide, as the reference
# tables' merges are, which carry the bare legacy table name).
AUTH = "auth"
_NAMESPACES = (AUTH,)
_NAMESPACE_SEPARATOR = "."


@dataclass(frozen=True, slots=True)
class Target:
    """What a step works on: ``name`` (empty: no one thing), in ``namespace`` (empty: none)."""

    name: str = ""
    namespace: str = ""

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.namespace}{_NAMESPACE_SEPARATOR}{self.name}"
        return self.name

    @classmethod
    def parse(cls, text: str) -> Target:
        """The target whose text is ``text``; a name may hold a dot (a path, a database), so only a known
        namespace is read as one."""
        namespace, separator, name = text.partition(_NAMESPACE_SEPARATOR)
        if separator and namespace in _NAMESPACES:
            return cls(name, namespace)
        return cls(text)

    @classmethod
    def auth_table(cls, table: str) -> Target:
        """The target phase 3 validates legacy auth table ``table`` under."""
        return cls(table, AUTH)


# A step that works on no one thing (a phase-wide check, a tenant's whole schema step named by its tenant).
NO_TARGET = Target()


@dataclass(frozen=True, slots=True)
class StepRef:
    """A kind of step of a phase, e.g. ``StepRef("data", "validate")``."""

    phase: str
    kind: str

    def key(self, tenant_id: str | None = None, target: Target = NO_TARGET) -> str:
        """The tracking key of this kind of step for ``tenant_id`` (None: phase-wide) and ``target``."""
        return StepKey(self, tenant_id, target).migration_id


@dataclass(frozen=True, slots=True)
class StepKey:
    """A step's tracking key, in parts: which step (``ref``), whose (``tenant_id``, None: phase-wide),
    on what (``target``), and for a key range's sub-step row its 1-based ``range_index``."""

    ref: StepRef
    tenant_id: str | None = None
    target: Target = NO_TARGET
    range_index: int | None = None

    @property
    def migration_id(self) -> str:
        parts = [self.ref.phase, self.tenant_id or ANY_TENANT, self.ref.kind]
        # A range's key always has its target part (empty or not) before the index.
        if self.target.name or self.range_index is not None:
            parts.append(str(self.target))
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
        target = Target.parse(parts[3]) if len(parts) > 3 else NO_TARGET
        return cls(StepRef(phase, kind), None if tenant == ANY_TENANT else tenant, target)
