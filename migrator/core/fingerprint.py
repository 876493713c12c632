"""A table's content fingerprint as a value: its row count, its digest and the method it was made with.

Tracking rows store it as text, in the form of the release that made it: "rows:v3:digest" (converted
columns compared in the legacy type's terms), "rows:v2:digest" (converted columns as the target's type)
or "rows:digest" (every row hashed by its text). :meth:`Fingerprint.parse` reads each of these forms and
``str()`` writes the same form back, so a row validated by an earlier release is read, compared and
rewritten unchanged. How fingerprints are computed is in :mod:`migrator.ops.fingerprint`.
"""

from __future__ import annotations

from dataclasses import dataclass

EXACT = "exact"  # recorded as "rows:v3:digest"
BY_VALUE = "value"  # recorded as "rows:v2:digest"
BY_TEXT = "text"  # recorded as "rows:digest"
_MARKS = {BY_VALUE: "v2", EXACT: "v3"}
_METHODS = {mark: method for method, mark in _MARKS.items()}


@dataclass(frozen=True)
class Fingerprint:
    """Equal fingerprints (``==``) mean equal content, when both were made the same way."""

    rows: int
    digest: str
    method: str = BY_VALUE

    def __str__(self) -> str:
        if self.method == BY_TEXT:
            return f"{self.rows}:{self.digest}"
        return f"{self.rows}:{_MARKS[self.method]}:{self.digest}"

    @classmethod
    def parse(cls, recorded: str) -> Fingerprint:
        """The fingerprint a tracking row recorded, in any of the forms above."""
        match recorded.split(":"):
            case [rows, mark, digest] if mark in _METHODS:
                return cls(int(rows), digest, _METHODS[mark])
            case [rows, digest]:
                return cls(int(rows), digest, BY_TEXT)
        raise ValueError(f"not a recorded fingerprint: {recorded!r}")

    @classmethod
    def parse_recorded(cls, recorded: str | None) -> Fingerprint | None:
        """:meth:`parse` of a tracking row's column, which is empty for steps that compare nothing."""
        return cls.parse(recorded) if recorded else None
