"""Shared fixtures: the real-data samples in ../shared/data (read-only, optional)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxr_testutils import make_prepared

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRGUIDE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public-source samples; skips when this checkout has no ../shared/data."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data samples not found at {SHARED_DATA} (set CXRGUIDE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def tiny_prepared(tmp_path: Path) -> Path:
    return make_prepared(tmp_path / "prep")
