"""Fixtures of the phase tests: seeded legacy data taken through phases 1, 2 and 3.

Each is a copy of a template built once per session (tests/stages.py). The ``prepared`` stage's
phase-1 backup was taken once, into a folder of the session: a test about the backup itself runs
phase 1 on its own (see tests/migrator/phases/test_prepare.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import run
from tests.stages import LARGER, StageDatabases, seeded_data


@pytest.fixture
def prepared(stage_db: StageDatabases) -> dict[str, Any]:
    """Seeded legacy data after phase 1 (tenants registered, backup taken)."""
    stage_db.use("prepared")
    return seeded_data()


@pytest.fixture
def prepared_with_backup(seeded: dict[str, Any]) -> dict[str, Any]:
    """Phase 1 run by this test: a real pg_dump into this test's backup folder (the ``prepared``
    stage's backup is the session's, outside the folder a test's settings point at)."""
    run("migrate_phase", "prepare", interactive=False)
    return seeded


@pytest.fixture
def schemas_ready(stage_db: StageDatabases) -> dict[str, Any]:
    """... and after phase 2 (service schemas and namespaced tenant tables)."""
    stage_db.use("schemas_ready")
    return seeded_data()


@pytest.fixture
def migrated(stage_db: StageDatabases) -> dict[str, Any]:
    """... and after phase 3 (data copied and validated)."""
    stage_db.use("migrated")
    return seeded_data()


@pytest.fixture
def synced(stage_db: StageDatabases) -> dict[str, Any]:
    """... and after ``data --online`` (every tenant and the legacy auth schema in two-way sync)."""
    stage_db.use("synced")
    return seeded_data()


@pytest.fixture
def larger_schemas_ready(stage_db: StageDatabases) -> dict[str, int]:
    """Two tenants of 4,000 contacts and 8,000 activities each (``LARGER``) after phases 1 and 2: for the
    tests that kill a copy half way."""
    stage_db.use("larger_schemas_ready")
    return dict(LARGER)
