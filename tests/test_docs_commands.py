"""The commands the operator docs show, run as written against a seeded legacy database.

Each doc's fenced ```bash blocks, in document order, make one bash script (``set -e``, every command
echoed as it runs), run in the project folder against a copy of the seeded stage (three tenants of legacy
data): ``python`` is this interpreter, ``DATABASE_URL`` names the copy and ``SALESFLOW_LOAD_QUERIES`` shortens
phase 5's load test, as a site may. A documented command that fails
fails the test, with the script's output up to that command. Background jobs (``... &``, ``kill %1``,
``wait %1``) work as they do in an operator's shell script; one still running when the script ends fails
the test (and is killed with the script's session).

Blocks in another language (```text, ```sql, ```python) are illustration and are not run: option syntax
with placeholders belongs there, and a ```bash block that holds one (``[--jobs N]``, ``<phase>``,
``...``) fails the test before anything runs. A block preceded by the line
``<!-- docs-test: skip (why) -->`` is not run either; it is for the few commands that cannot run inside the
test suite (the suite itself, ``./scripts/test``), and the marker says why.

Every flow ends with the migration complete: the test then checks that ``status`` says so, that every
tenant is live and that each tenant's new tables hold the rows phase 1 counted in its legacy tables.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from psycopg import sql

from migrator import db
from migrator.config import get_config
from migrator.reports.status import status_report
from migrator.reports.tenant_progress import with_migration_progress
from migrator.tables import TENANT_DATA_TABLES
from tenants.models import MigrationState, Tenant
from tests import warm_children
from tests.migrator.helpers import PROJECT_DIR, manage_env
from tests.stages import admin_connection, drop_database

DOCS = ("README.md", "docs/runbook.md", "docs/online.md")
SKIP_MARKER = re.compile(r"<!--\s*docs-test:\s*skip\b")
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
# Option syntax and elisions that a shell would not run as meant: `[--jobs N]`, `<phase>`, `...`.
PLACEHOLDER = re.compile(r"\[-|<[a-z][\w -]*>|\.\.\.")
SCRIPT_TIMEOUT_SECONDS = 300
OUTPUT_SHOWN_LINES = 120


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    code: str


def bash_blocks(doc: str, root: Path = PROJECT_DIR) -> list[Block]:
    """The doc's ```bash blocks that the test runs, in order (those after a skip marker left out)."""
    blocks: list[Block] = []
    lines = (root / doc).read_text().splitlines()
    previous = ""  # the last non-blank line before the current one
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            if lines[index].strip():
                previous = lines[index]
            index += 1
            continue
        fence, language, start = match.group(1), match.group(2), index
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith(fence):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        if language == "bash" and not SKIP_MARKER.search(previous):
            blocks.append(Block(doc, start + 1, "\n".join(body)))
        previous = ""
    return blocks


def code_of(line: str) -> str:
    """A shell line without its comment (a ``#`` at the start or after a blank)."""
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def placeholders(block: Block) -> list[str]:
    return [
        f"{block.doc}:{block.line + number}: {line.strip()}"
        for number, line in enumerate(block.code.splitlines(), start=1)
        if PLACEHOLDER.search(code_of(line))
    ]


def script_of(blocks: list[Block]) -> str:
    parts = ["set -eo pipefail", "PS4='+ [${SECONDS}s] '", "set -x"]  # each command echoed with the time so far
    for block in blocks:
        parts += [f": '--- {block.doc}, block at line {block.line}'", block.code]
    return "\n".join(parts) + "\n"


def python_on_path(folder: Path) -> dict[str, str]:
    """The environment of a script whose ``python`` (first on PATH) is this interpreter, with its packages.

    Its ``python manage.py ...`` runs are forked from this test process's warm process (tests/warm_client.py):
    the same run as a cold start, without most of a second of imports each.
    """
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "python"
    env = {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}
    warm = warm_children.socket_path()
    if warm is None:
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    else:
        client = Path(warm_children.__file__).with_name("warm_client.py")
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{client}" "$@"\n')
        env |= {"SALESFLOW_PYTHON": sys.executable, "SALESFLOW_TEST_WARM_SOCKET": warm}
    wrapper.chmod(0o755)
    return env


@dataclass(frozen=True)
class ScriptRun:
    returncode: int | None  # None: killed at the timeout
    output: str
    left_running: bool  # a background job outlived the script


def end_session(session: int) -> bool:
    """Kill what is left of the script's session (a background job it started); say whether anything was."""
    try:
        os.killpg(session, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def run_script(script: Path, env: dict[str, str]) -> ScriptRun:
    """bash runs the script in a session of its own, its output into a file: when bash ends (or at the
    timeout), a background job it left behind is ended with the session instead of holding a pipe open."""
    log = script.with_suffix(".log")
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", str(script)],
            cwd=PROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode: int | None = process.wait(timeout=SCRIPT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            returncode = None
        left_running = end_session(process.pid)
        process.wait()
    return ScriptRun(returncode, log.read_text(), left_running)


def new_table_rows(schema: str) -> int:
    return sum(
        int(db.fetchvalue(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, spec.table))))
        for spec in TENANT_DATA_TABLES
    )


def drop_rehearsal_copy() -> None:
    """The scratch database a rehearsal that failed half way may have left (``<database>_rehearsal``)."""
    conf = dict(connections["default"].settings_dict)
    with admin_connection(conf) as admin:
        drop_database(admin, f"{conf['NAME']}_rehearsal")


@pytest.mark.long
@pytest.mark.parametrize("doc", DOCS)
def test_the_documented_commands_run_as_written(doc: str, seeded: dict[str, Any], tmp_path: Path) -> None:
    blocks = bash_blocks(doc)
    assert blocks, f"{doc} has no ```bash block to run"
    found = [entry for block in blocks for entry in placeholders(block)]
    assert not found, "placeholders in ```bash blocks (write a real command, or use a ```text block):\n" + "\n".join(
        found
    )
    config = get_config()
    script = tmp_path / f"{Path(doc).stem}.sh"
    script.write_text(script_of(blocks))
    env = manage_env(
        SALESFLOW_ROLE_PREFIX=config.role_prefix,
        SALESFLOW_BACKUP_DIR=str(config.backup_dir),
        # The site's load test ends after 200 runs of each query (a fifth of the default): the same test,
        # 5 CPU-seconds less for each verify the docs run.
        SALESFLOW_LOAD_QUERIES="200",
        **python_on_path(tmp_path / "bin"),
    )
    connections.close_all()  # a restore swaps the database: nothing of this process may hold it open
    try:
        result = run_script(script, env)
    finally:
        drop_rehearsal_copy()
    shown = "\n".join(result.output.splitlines()[-OUTPUT_SHOWN_LINES:])
    if result.returncode != 0:
        ended = (
            f"exit {result.returncode}" if result.returncode is not None else f"killed after {SCRIPT_TIMEOUT_SECONDS} s"
        )
        pytest.fail(
            f"a command of {doc} failed ({ended}; the script is {script}); the last {OUTPUT_SHOWN_LINES} lines "
            f"of its output, the failing command last:\n{shown}",
            pytrace=False,
        )
    assert not result.left_running, f"{doc} leaves a background job running (stop it, then `wait` for it):\n{shown}"

    report = status_report()
    assert report.complete, f"{doc}: the flow ran, but status does not say the migration is complete"
    tenants = list(with_migration_progress(Tenant.objects.exclude(migration_state=MigrationState.EXCLUDED)))
    assert tenants, f"{doc}: no tenant registered"
    for tenant in tenants:
        assert tenant.migration_state == MigrationState.LIVE, f"{doc}: {tenant.tenant_id} is {tenant.migration_state}"
        assert new_table_rows(tenant.schema_name) == tenant.legacy_rows, (
            f"{doc}: {tenant.schema_name}'s new tables do not hold the {tenant.legacy_rows} rows phase 1 counted"
        )


def test_the_blocks_run_are_the_bash_blocks_without_a_skip_marker(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text(
        "Text.\n\n```bash\npython manage.py migrate_phase status   # where it stands\n```\n\n"
        "<!-- docs-test: skip (the suite itself) -->\n```bash\n./scripts/test\n```\n\n"
        "```text\npython manage.py migrate_phase <phase> [--jobs N]\n```\n\n"
        "````bash\nkill -TERM %1   # ... then wait\nwait %1\n````\n\n"
        "```bash\npython manage.py migrate_phase cutover [--jobs N]\n```\n"
    )

    blocks = bash_blocks("doc.md", tmp_path)

    assert [(b.line, b.code) for b in blocks] == [
        (3, "python manage.py migrate_phase status   # where it stands"),
        (16, "kill -TERM %1   # ... then wait\nwait %1"),
        (21, "python manage.py migrate_phase cutover [--jobs N]"),
    ]
    assert [placeholders(b) for b in blocks] == [
        [],
        [],
        ["doc.md:22: python manage.py migrate_phase cutover [--jobs N]"],
    ]
