"""Fixtures of the phase tests: seeded legacy data taken through phases 1, 2 and 3."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import run


@pytest.fixture
def prepared(seeded: dict[str, Any]) -> dict[str, Any]:
    """Seeded legacy data after phase 1 (tenants registered, backup taken)."""
    run("migrate_phase", "prepare", interactive=False)
    return seeded


@pytest.fixture
def schemas_ready(prepared: dict[str, Any]) -> dict[str, Any]:
    """... and after phase 2 (service schemas and namespaced tenant tables)."""
    run("migrate_phase", "schemas", interactive=False)
    return prepared


@pytest.fixture
def migrated(schemas_ready: dict[str, Any]) -> dict[str, Any]:
    """... and after phase 3 (data copied and validated)."""
    run("migrate_phase", "data", interactive=False, batch_size=50)
    return schemas_ready
