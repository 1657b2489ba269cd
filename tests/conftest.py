"""Shared fixtures: the real-data samples in ../shared/data (read-only, optional), and torch on
one thread.

On a small machine shared with other test runs, torch's default of one OpenMP thread per core
makes threads spin against each other (a 64-pixel MobileNet forward measured 1-2 s instead of
10 ms), so model-heavy tests opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``
(restored after each test) or ``"one_thread_per_module"`` (set for a module's shared fixtures too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

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


def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def one_thread() -> Iterator[None]:
    yield from _torch_threads(1)


@pytest.fixture(scope="module")
def one_thread_per_module() -> Iterator[None]:
    yield from _torch_threads(1)


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Iterator[Path]:
    """ONNX exports cached for the session (not in ~/.cache): the ONNX backend's Predictors
    share one export per run instead of ~20 s each."""
    folder = tmp_path_factory.mktemp("export-cache")
    previous = os.environ.get("CXRGUIDE_CACHE_DIR")
    os.environ["CXRGUIDE_CACHE_DIR"] = str(folder)
    yield folder / "onnx"
    if previous is None:
        os.environ.pop("CXRGUIDE_CACHE_DIR", None)
    else:
        os.environ["CXRGUIDE_CACHE_DIR"] = previous
