"""Shared fixtures. Data from ``../shared/data`` is optional: tests that need it skip cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder ``../shared/data``; skips the test when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent (fresh clone)")
    return SHARED_DATA
