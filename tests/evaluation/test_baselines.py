"""Baselines (majority, source prior), margins and collapse warnings in the metrics json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrguide.data.datasets import Prepared
from cxrguide.evaluation.baselines import (
    add_baselines,
    baseline_report,
    fit_baselines,
    format_baselines,
    per_source_details,
)
from cxrguide.evaluation.evaluate import write_results
from cxrguide.evaluation.metrics import classification_report, format_report
from cxrguide.labels import CLASS_INDEX


def confounded_manifest() -> pd.DataFrame:
    """Source A: only COVID-19; source B: Normal 6, Pneumonia 4; test A 4 COVID, B 3N + 3P."""
    rows = [("A", "COVID-19", "train")] * 8 + [("B", "Normal", "train")] * 6
    rows += [("B", "Pneumonia", "train")] * 4
    rows += [("A", "COVID-19", "test")] * 4 + [("B", "Normal", "test")] * 3
    rows += [("B", "Pneumonia", "test")] * 3
    return pd.DataFrame(rows, columns=["site", "label", "split"])


def test_rules_are_fitted_on_train_only():
    rules = fit_baselines(confounded_manifest())
    assert rules == {"majority": "COVID-19", "source_prior": {"A": "COVID-19", "B": "Normal"}}
    assert fit_baselines(confounded_manifest().query("split == 'test'")) is None


def test_margins_of_a_constant_model_are_zero_over_majority_and_negative_over_source_prior():
    m = confounded_manifest()
    test = m[m.split == "test"]
    y = test["label"].map(CLASS_INDEX).to_numpy()
    pred = np.full(len(y), CLASS_INDEX["COVID-19"])
    out = baseline_report(y, pred, test["site"].to_numpy(), m, n_boot=300, seed=1)
    assert out["majority"]["accuracy"] == 0.4 and out["majority"]["class"] == "COVID-19"
    assert out["source_prior"]["accuracy"] == 0.7  # 4 A + 3 B-Normal
    assert out["better"] == "source_prior"
    assert out["majority"]["margin"] == 0.0 and out["majority"]["margin_ci95"] == [0.0, 0.0]
    assert abs(out["source_prior"]["margin"] - (-0.3)) < 1e-12
    lo, hi = out["source_prior"]["margin_ci95"]
    assert lo < -0.3 < hi and hi <= 0
    lo, hi = out["source_prior"]["ci95"]
    assert lo < 0.7 < hi


def test_unseen_source_falls_back_to_the_majority_class():
    m = confounded_manifest()
    y = np.array([CLASS_INDEX["Normal"]] * 2)
    out = baseline_report(y, y, np.array(["C", "C"]), m, n_boot=0)
    assert out["source_prior"]["fallback_sources"] == ["C"]
    assert out["source_prior"]["accuracy"] == 0.0 and out["majority"]["ci95"] is None


def test_small_sources_get_wide_wilson_intervals_and_class_mix():
    y = np.array([0, 0, 0, 2, 2, 1])
    pred = np.array([0, 0, 0, 2, 0, 1])
    out = per_source_details(y, pred, np.array(["s", "s", "s", "t", "t", "t"]))
    assert out["s"]["class_counts"] == {"Normal": 3, "Pneumonia": 0, "COVID-19": 0}
    lo, hi = out["s"]["accuracy_ci95"]
    assert abs(lo - 0.4385) < 1e-3 and hi == 1.0  # 3 of 3 correct is not "100% precisely"
    assert out["t"]["predicted_counts"] == {"Normal": 1, "Pneumonia": 1, "COVID-19": 1}


def _report(y, pred, sites, manifest, attention=None):
    probs = np.eye(3)[pred]
    report = classification_report(y, probs, sites, n_boot=200, seed=0)
    if attention:
        report["attention"] = attention
    return add_baselines(report, y, probs, sites, manifest, n_boot=200, seed=0)


def test_collapsed_model_gets_every_warning():
    m = confounded_manifest()
    test = m[m.split == "test"]
    y, sites = test["label"].map(CLASS_INDEX).to_numpy(), test["site"].to_numpy()
    attention = {"lungs": {"energy": {"mean": 0.6}, "pointing_game": 0.97}}
    report = _report(y, np.full(len(y), 2), sites, m, attention)
    codes = [w["code"] for w in report["warnings"]]
    assert codes == ["single_class_predictions", "below_baseline", "attention_uninformative"]
    assert "10 of 10 predictions (100%) are COVID-19" in report["warnings"][0]["message"]
    text = format_report(report)
    assert "WARNING [below_baseline]" in text and "baseline source prior" in text


def test_a_skilled_model_gets_no_warning():
    rng = np.random.default_rng(0)
    n = 200
    sites = np.array(["A", "B"] * (n // 2))
    y = rng.integers(0, 3, n)
    manifest = pd.DataFrame(
        {
            "site": sites,
            "label": [("Normal", "Pneumonia", "COVID-19")[k] for k in y],
            "split": "train",
        }
    )
    report = _report(y, y, sites, manifest)
    assert report["warnings"] == []
    assert report["baselines"]["majority"]["margin_ci95"][0] > 0.5
    assert not any(line.startswith("WARNING") for line in format_baselines(report))


def test_write_results_puts_baselines_and_warnings_in_the_json(tiny_prepared: Path, tmp_path):
    prepared = Prepared.open(tiny_prepared)
    rows = prepared.rows("test")
    y = prepared.manifest["label"].map(CLASS_INDEX).to_numpy()[rows]
    probs = np.tile([0.1, 0.2, 0.7], (len(rows), 1))
    write_results(tmp_path / "run", "test", prepared, rows, y, probs, n_boot=50, seed=0, extra={})
    saved = json.loads((tmp_path / "run/metrics_test.json").read_text())
    assert set(saved["baselines"]) >= {"majority", "source_prior", "better"}
    assert saved["warnings"][0]["code"] == "single_class_predictions"
    assert "accuracy_ci95" in saved["per_source"]["site0"]
