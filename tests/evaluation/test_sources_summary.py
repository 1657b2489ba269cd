"""The cross-source study's summary from run outputs: a hand-made case, seeds, the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrguide.data.datasets import Prepared
from cxrguide.evaluation.source_outputs import RunOutputs, split_metrics
from cxrguide.evaluation.sources_summary import (
    combine_seeds,
    runs_frame,
    variant_summary,
    write_study,
)

LABELS = ("Normal", "Pneumonia")


def _prepared() -> Prepared:
    """40 films: A rows 0-19, B rows 20-39; row % 10: 0-5 train, 6-7 val, 8-9 test."""
    rows = [
        {
            "source": "A" if i < 20 else "B",
            "label": LABELS[i % 2],
            "split": "train" if i % 10 < 6 else "val" if i % 10 < 8 else "test",
        }
        for i in range(40)
    ]
    return Prepared(Path("."), pd.DataFrame(rows), 32)


def _outputs(rows: np.ndarray, wrong: set[int], features: np.ndarray) -> RunOutputs:
    y = np.arange(40) % 2
    pred = np.array([(y[r] + 1) % 2 if r in wrong else y[r] for r in rows])
    return RunOutputs(rows, np.eye(3)[pred].astype(np.float32), features[rows])


def _summary(seed: int = 0, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    prepared = _prepared()
    everything = np.arange(40)
    source_feats = np.c_[np.r_[np.zeros(20), np.ones(20)] * 5, rng.normal(0, 0.1, (40, 2))]
    internal = _outputs(everything, {8}, source_feats)
    # fold A misses row 0 (say, an empty lung mask under lung-input): 19 films scored
    fold_a = _outputs(everything[1:], {1, 2, 3, 4}, rng.normal(0, 1, (40, 3)))
    fold_b = _outputs(
        everything, set(range(20, 30)) - ({21} if shift else set()), rng.normal(0, 1, (40, 3))
    )
    return prepared, variant_summary(
        prepared, "source", ["A", "B"], internal, {"A": fold_a, "B": fold_b}, min_group=1
    )


def test_variant_summary_by_hand():
    _, s = _summary()
    a, b = s["per_source"]
    assert (a["source"], a["n"], a["internal_n"]) == ("A", 19, 4)
    assert a["internal_accuracy"] == 0.75  # test rows 8, 9, 18, 19: row 8 wrong
    assert a["external_accuracy"] == pytest.approx(15 / 19)  # rows 1-4 wrong of 1..19
    assert a["external_ece"] == pytest.approx(1 - 15 / 19)  # confidence 1 everywhere
    assert (b["internal_accuracy"], b["external_accuracy"], b["n"]) == (1.0, 0.5, 20)
    assert 0 <= a["ood_auroc"] <= 1 and 0 <= b["ood_auroc"] <= 1
    assert s["mean_internal"] == pytest.approx((0.75 + 1.0) / 2)
    assert s["mean_external"] == pytest.approx((15 / 19 + 0.5) / 2)
    assert s["source_probe_accuracy"] == 1.0  # the first feature is the source
    assert s["source_probe_majority"] == 0.5  # 12 train films each: "A", half of the test
    assert (s["worst_group_accuracy"], s["worst_group"]) == (0.5, "0|A")  # rows 8, 18
    assert s["internal_test_accuracy"] == 7 / 8


def test_combine_seeds_means_every_figure_and_keeps_means_consistent():
    _, s0 = _summary(0)
    _, s1 = _summary(1, shift=1.0)  # source B: row 21 right in this seed -> 11/20
    both = combine_seeds({0: s0, 1: s1})
    b = both["per_source"][1]
    assert b["external_accuracy"] == pytest.approx((0.5 + 0.55) / 2)
    assert both["mean_external"] == pytest.approx(
        np.mean([p["external_accuracy"] for p in both["per_source"]])
    )
    assert both["mean_external"] == pytest.approx((s0["mean_external"] + s1["mean_external"]) / 2)
    assert both["mean_external_sd"] == pytest.approx(0.0125)
    assert both["seeds"] == [0, 1] and both["worst_group"] is None


def test_split_metrics_on_scored_rows_only():
    prepared, _ = _summary()
    labels = np.arange(40) % 2
    out = _outputs(np.arange(1, 40), {1, 2}, np.zeros((40, 3)))
    m = split_metrics(out, labels, prepared.rows("train"))  # row 0 not scored
    assert m["n"] == 23 and m["accuracy"] == pytest.approx(21 / 23)
    assert np.isnan(split_metrics(out, labels, np.array([0]))["accuracy"])


def test_write_study_files_are_strict_json_csv_markdown_and_plot(tmp_path):
    _, s = _summary()
    s["per_source"][0]["ood_auroc"] = float("nan")  # an undefined figure -> null
    study = {
        "variants": {"stage1": combine_seeds({0: s})},
        "skipped": [{"source": "C", "n": 3, "reason": "3 films, fewer than --min-films 50"}],
        "timing": {"features": 1.0},
        "backbone": "mobilenet_v2",
        "weights": "none",
        "size": 32,
        "seeds": [0],
        "protocol": "Leave one source out.",
    }
    md = write_study(tmp_path, study, runs_frame({"stage1": {0: s}}))
    loaded = json.loads(
        (tmp_path / "sources.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"{c} in JSON"),
    )
    assert loaded["variants"]["stage1"]["per_source"][0]["ood_auroc"] is None
    frame = pd.read_csv(tmp_path / "sources.csv")
    assert list(frame.source) == ["A", "B"] and set(frame.variant) == {"stage1"}
    assert "| stage1 | 87.5 |" in md and "Skipped C (3 films)" in md
    assert "| A | 19 | 75.0 -> 78.9 |" in md
    assert (tmp_path / "sources.png").stat().st_size > 1000
