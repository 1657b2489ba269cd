"""bench/sources_masks.py: accuracy split by lung-mask flag, from saved study outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import sources_masks  # noqa: E402
from cxrguide.data.datasets import Prepared
from cxrguide.evaluation.source_outputs import RunOutputs


def _probs(labels: list[int], right: list[bool]) -> np.ndarray:
    """One-hot probabilities: the true class where ``right``, the next class otherwise."""
    return np.eye(3, dtype=np.float32)[
        [y if r else (y + 1) % 3 for y, r in zip(labels, right, strict=True)]
    ]


def test_accuracy_by_flag_internal_and_external(tmp_path):
    m = pd.DataFrame(
        {
            "source": ["A", "A", "A", "A", "B", "B", "B", "B"],
            "split": ["train", "test", "test", "test", "train", "test", "test", "train"],
            "label": ["Normal"] * 4 + ["COVID-19"] * 4,
        }
    )
    prepared = Prepared(tmp_path, m, 16)
    flags = np.array(["ok", "ok", "implausible", "empty", "ok", "ok", "ok", "implausible"])
    y = [0, 0, 0, 0, 2, 2, 2, 2]
    runs = tmp_path / "study/runs/seed0/lung-input"
    # all-sources run: test rows 1,2,3,5,6; row 3 (empty mask) left out, as lung-input does
    scored = np.array([0, 1, 2, 4, 5, 6, 7])
    right = [True, True, False, True, True, False, True]
    RunOutputs(scored, _probs([y[r] for r in scored], right), np.zeros((7, 2))).save(
        _mkdir(runs / "all/stage3-x")
    )
    # holdout-B: every film of B scored
    rows_b = np.arange(4, 8)
    RunOutputs(rows_b, _probs([2] * 4, [True, True, False, False]), np.zeros((4, 2))).save(
        _mkdir(runs / "holdout-B/stage3-x")
    )
    frame = sources_masks.accuracy_by_flag(tmp_path / "study", prepared, flags, "source")
    got = {(r.fold, r.mask): (r.accuracy, r.n) for r in frame.itertuples()}
    # internal ok test films 1, 5, 6: right, right, wrong; flagged: 2 (wrong), 3 not scored
    assert got[("all", "ok")] == (pytest.approx(2 / 3), 3)
    assert got[("all", "flagged")] == (0.0, 1)
    # external B: ok rows 4, 5, 6 -> right, right, wrong; flagged row 7 -> wrong
    assert got[("holdout-B", "ok")] == (pytest.approx(2 / 3), 3)
    assert got[("holdout-B", "flagged")] == (0.0, 1)
    table = sources_masks.pooled(frame)
    assert table.loc[("lung-input", "internal"), ("n", "ok")] == 3


def test_no_scored_runs_is_one_line(tmp_path):
    (tmp_path / "study/runs/seed0/stage2/all").mkdir(parents=True)
    prepared = Prepared(
        tmp_path, pd.DataFrame({"source": ["A"], "split": ["test"], "label": ["Normal"]}), 16
    )
    with pytest.raises(SystemExit, match="no scored runs"):
        sources_masks.accuracy_by_flag(tmp_path / "study", prepared, np.array(["ok"]), "source")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
