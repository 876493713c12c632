"""Where the benchmark scripts write their results: each into its own section of docs/benchmarks.md.

A section is the text between ``<!-- NAME: start -->`` and ``<!-- NAME: end -->``. The rest of the page (what
the figures mean, what changed between rounds) is written by hand and never touched here. A run replaces its
section's text, or, with ``accumulate``, adds to it; a page without the section gets it at its end, under
``heading``. Earlier runs are kept in ``RESULTS.md`` beside this file.
"""

from __future__ import annotations

from pathlib import Path

BENCHMARKS_DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def write_section(name: str, text: str, *, heading: str, accumulate: bool = False) -> Path:
    """Write ``text`` into section ``name`` of docs/benchmarks.md; return the page's path."""
    start, end = section_markers(name)
    page = BENCHMARKS_DOC.read_text() if BENCHMARKS_DOC.exists() else "# Benchmarks\n"
    body = text.strip() + "\n"
    begin = page.find(start + "\n")
    finish = page.find(end, begin) if begin >= 0 else -1
    if begin < 0 or finish < 0:
        BENCHMARKS_DOC.write_text(f"{page.rstrip()}\n\n{heading}\n\n{start}\n{body}{end}\n")
        return BENCHMARKS_DOC
    previous = page[begin + len(start) + 1 : finish].strip()
    if accumulate and previous:
        body = f"{previous}\n\n{body}"
    BENCHMARKS_DOC.write_text(f"{page[:begin]}{start}\n{body}{end}{page[finish + len(end) :]}")
    return BENCHMARKS_DOC
