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
from filelock import FileLock

from cxr_testutils import make_prepared
from cxrguide.evaluation import evaluate as E
from cxrguide.inference import export as export_mod
from inference_helpers import session_root

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


@pytest.fixture
def no_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs scored for real minus the bootstrap CIs, for tests of plumbing: 200 resamples of
    sklearn metrics per scored split were ~40% of the tiny pipeline test's time. The intervals
    have their own tests (tests/evaluation/test_metrics.py, test_baselines.py)."""
    real = E.evaluate_run
    monkeypatch.setattr(E, "evaluate_run", lambda *a, **k: real(*a, **{**k, "n_boot": 0}))


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Iterator[Path]:
    """ONNX exports cached for the run (not in ~/.cache): the ONNX backend's Predictors share
    one export per model instead of ~15 s each. Under xdist both workers use one folder, and an
    export into it holds a per-model file lock, so the second worker reuses the first's file."""
    root = session_root(tmp_path_factory)
    folder, locks = root / "export-cache", root / "export-locks"
    locks.mkdir(parents=True, exist_ok=True)
    real = export_mod.cached_onnx

    def locked(module, image_size, *, identity="", opset=export_mod.DEFAULT_OPSET, folder=None):
        target = folder or export_mod.export_cache_dir()
        if target.parent != root / "export-cache":  # a test's own cache: as it is
            return real(module, image_size, identity=identity, opset=opset, folder=folder)
        key = export_mod.export_key(module, image_size, opset, identity)
        with FileLock(str(locks / f"{key}.lock")):
            return real(module, image_size, identity=identity, opset=opset, folder=folder)

    previous = os.environ.get("CXRGUIDE_CACHE_DIR")
    os.environ["CXRGUIDE_CACHE_DIR"] = str(folder)
    export_mod.cached_onnx = locked
    yield folder / "onnx"
    export_mod.cached_onnx = real
    if previous is None:
        os.environ.pop("CXRGUIDE_CACHE_DIR", None)
    else:
        os.environ["CXRGUIDE_CACHE_DIR"] = previous


# Under xdist (`make test`: `--dist loadfile --no-loadscope-reorder`) the files go out longest
# first, so that the two workers end together instead of one finishing a long file alone; a
# file stays on one worker, so its module fixtures are built once. The seconds are the last
# run's per file, from pytest's cache (read once by the controller and handed to every worker,
# which must all collect the same order); a file not seen yet counts `SLOW_GUESS` per `slow`
# test. A run without xdist keeps pytest's order.
FILE_SECONDS = "cxrguide/file_seconds"
SLOW_GUESS, TEST_GUESS = 30.0, 0.5
_seconds: dict[str, float] = {}


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _known_seconds(config: pytest.Config) -> dict[str, float]:
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    return cache.get(FILE_SECONDS, {}) if cache else {}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # xdist, in the controller, once per worker
    node.workerinput[FILE_SECONDS] = _known_seconds(node.config)


@pytest.hookimpl(trylast=True)  # after pytest's own fixture-scope reordering, which it keeps
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    known = workerinput.get(FILE_SECONDS, {})
    guess: dict[str, float] = {}
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        guess[_file(item.nodeid)] = guess.get(_file(item.nodeid), 0.0) + (
            SLOW_GUESS if slow else TEST_GUESS
        )
    cost = {name: known.get(name, estimate) for name, estimate in guess.items()}
    items.sort(key=lambda item: -cost[_file(item.nodeid)])  # stable: order within a file kept


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[_file(report.nodeid)] = _seconds.get(_file(report.nodeid), 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if getattr(config, "cache", None) is None or hasattr(config, "workerinput") or not _seconds:
        return  # an xdist worker: the controller sees every report and writes once
    config.cache.set(
        FILE_SECONDS, {**_known_seconds(config), **{k: round(v, 2) for k, v in _seconds.items()}}
    )
