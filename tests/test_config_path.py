"""``tools/config_path.py``: the training config's path is counted, and the count is stable."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "config_path.py"


def _tool():
    spec = importlib.util.spec_from_file_location("config_path", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_climbs_back_counts_stays_in_modules_already_left():
    path = _tool().ConfigPath(("a", "b", "a", "c", "b", "a"))
    assert path.modules == ["a", "b", "c"]
    assert path.climbs_back == 3


@pytest.mark.slow
def test_tiny_train_path_is_counted_and_stable(tmp_path):
    tool = _tool()
    first = tool.tiny_train_path(tmp_path / "one")
    second = tool.tiny_train_path(tmp_path / "two")
    assert len(first.modules) > 0
    assert "cxrguide.training.finetune" in first.modules  # Stage II ran under the profiler
    assert (first.modules, first.stays) == (second.modules, second.stays)
