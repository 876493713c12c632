"""What the browser tests share: where Chromium is, where screenshots go, the operator they log in as, and
the marks that skip them without a browser."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("SALESFLOW_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
USERNAME, PASSWORD = "operator", "operator-password"

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() or shutil.which("chromium")),
        reason=f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="playwright is not installed (pip install -e '.[browser]')",
    ),
]


def csp_violations(page: Any) -> list[str]:
    """What the page's Content-Security-Policy refuses from now on, as the browser reports it (kept up to date)."""
    refused: list[str] = []
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )
    return refused
