"""What phase 1's drift report is made of: findings, the operator's decisions, and groups of identical
findings across tenants."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

from migrator.models import Disposition, FindingKind
from migrator.ops.carried import left_behind
from salesflow.layout import TENANT_SCHEMA_PREFIX

SCHEMAS_PER_QUERY = 200
SCHEMA_PLACEHOLDER = TENANT_SCHEMA_PREFIX + "<id>"  # a tenant's schema in a finding grouped across tenants


@dataclass(frozen=True)
class Finding:
    schema: str
    table: str
    kind: FindingKind
    object_name: str = ""
    detail: str = ""
    disposition: Disposition = Disposition.CARRIED
    action: str = ""
    decided_by: str = ""

    def line(self) -> str:
        """One line for an operator: where, what, and what happens or what to do."""
        where = f"{self.schema}.{self.table}" + (f".{self.object_name}" if self.object_name else "")
        text = f"{where}: {self.kind}" + (f" ({self.detail})" if self.detail else "")
        return f"{text} -- {self.disposition.label}: {self.action}" if self.action else text

    @property
    def blocks(self) -> bool:
        return self.disposition in (Disposition.DECISION, Disposition.REFUSED)

    def as_dict(self) -> dict[str, str]:
        return {
            "schema": self.schema,
            "table": self.table,
            "kind": str(self.kind),
            "object": self.object_name,
            "detail": self.detail,
            "disposition": str(self.disposition),
            "action": self.action,
            "decided_by": self.decided_by,
        }


@dataclass(frozen=True)
class Decisions:
    """What the operator decided on the command line about drift that cannot be carried exactly."""

    skip_schemas: frozenset[str] = frozenset()
    # (schema, table as it is named) -> the legacy table it stands for
    rename_tables: dict[tuple[str, str], str] = field(default_factory=dict)
    # SCHEMA.TABLE patterns (fnmatch: '*.notes_2019'): unknown tables left where they are, not migrated
    leave_tables: tuple[str, ...] = ()
    # (schema, table, name) patterns: legacy constraints and indexes not carried to the new table
    leave_constraints: tuple[tuple[str, str, str], ...] = ()
    # name patterns of objects depending on legacy tables left with the archived tables at cutover
    leave_dependents: tuple[str, ...] = ()
    # the legacy application's time zone and where it came from: legacy timestamps are read in it
    legacy_timezone: tuple[str, str] = ("UTC", "default")

    def leaves_table(self, schema: str, table: str) -> bool:
        return any(fnmatch.fnmatchcase(f"{schema}.{table}", pattern) for pattern in self.leave_tables)

    def leaves_constraint(self, schema: str, table: str, name: str) -> bool:
        return left_behind(self.leave_constraints, schema, table, name)


# --- grouping --------------------------------------------------------------------------------------


@dataclass
class FindingGroup:
    """Identical findings of several tenants: one line with a count and examples."""

    table: str
    kind: str
    object_name: str
    detail: str
    disposition: str
    action: str
    decided_by: str
    schemas: list[str] = field(default_factory=list)
    count: int = 0

    def line(self, examples: int = 3) -> str:
        where = f"{self.table}" + (f".{self.object_name}" if self.object_name else "")
        shown = ", ".join(self.schemas[:examples]) + (", ..." if self.count > examples else "")
        tenants = f"{self.count} tenant{'s' if self.count != 1 else ''} ({shown})"
        text = f"{tenants}: {where}: {self.kind}" + (f" ({self.detail})" if self.detail else "")
        label = Disposition(self.disposition).label
        decided = f" [{self.decided_by}]" if self.decided_by else ""
        text = f"{text} -- {label}{decided}: {self.action}" if self.action else text
        # One tenant: its own name where the group says tenant_<id> (an option can be copied as it is).
        return self._own(text)

    def _own(self, text: str) -> str:
        """``text`` with the tenant's own schema name again where the group is of one tenant."""
        return text.replace(SCHEMA_PLACEHOLDER, self.schemas[0]) if self.count == 1 else text

    def as_dict(self, examples: int = 5) -> dict[str, object]:
        return {
            "table": self._own(self.table),
            "kind": self.kind,
            "object": self._own(self.object_name),
            "detail": self._own(self.detail),
            "disposition": self.disposition,
            "action": self._own(self.action),
            "decided_by": self._own(self.decided_by),
            "tenants": self.count,
            "examples": self.schemas[:examples],
        }


def _generic(text: str, schema: str) -> str:
    """A finding's text with its own schema's name put as a placeholder, so identical drift groups."""
    return text.replace(schema, SCHEMA_PLACEHOLDER) if schema else text


def group_findings(findings: Iterable[dict[str, str]], keep_examples: int = 5) -> list[FindingGroup]:
    """Findings (as dicts) grouped across tenants: blocking ones first, then by table and kind."""
    groups: dict[tuple[str, ...], FindingGroup] = {}
    for f in findings:
        schema = f["schema"]
        table, kind, obj, detail, disposition, action, decided_by = (
            _generic(f[k], schema) for k in ("table", "kind", "object", "detail", "disposition", "action", "decided_by")
        )
        key = (table, kind, obj, detail, disposition, action, decided_by)
        group = groups.get(key)
        if group is None:
            group = groups[key] = FindingGroup(table, kind, obj, detail, disposition, action, decided_by)
        group.count += 1
        if len(group.schemas) < keep_examples:
            group.schemas.append(schema)
    order = {Disposition.REFUSED: 0, Disposition.DECISION: 1, Disposition.DECIDED: 2, Disposition.CARRIED: 3}
    return sorted(groups.values(), key=lambda g: (order[Disposition(g.disposition)], g.table, g.kind, g.object_name))
