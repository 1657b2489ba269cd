"""Models tests run torch single-threaded (see tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread_torch(one_thread) -> None:
    """Every test here builds or runs networks."""
