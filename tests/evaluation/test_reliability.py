"""Reliability statistics fitted when a run finishes; evaluate's calibration / ood / selective
sections; `evaluate RUN --data OTHER --split all --out DIR`; small validation sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_testutils import make_prepared
from cxrguide.cli import main
from cxrguide.config import TrainConfig
from cxrguide.core.reliability import MIN_VAL_FILMS, RELIABILITY_FILE, load_reliability
from cxrguide.evaluation.evaluate import score_split
from cxrguide.training.dispatch import train
from inference_helpers import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory) -> Path:
    """A Stage I run whose validation split has 24 films (enough for thresholds)."""

    root = tmp_path_factory.mktemp("reliability")
    prep = make_prepared(root / "prep", n_per_class=48)
    train(
        TrainConfig(
            stage=1,
            data=prep,
            backbone="mobilenet_v2",
            weights="none",
            image_size=64,
            max_epochs=2,
            batch_size=16,
            out=root / "runs",
            progress=False,
        ),
        score_split,
    )
    return root / "runs" / "stage1-mobilenet_v2"


@pytest.mark.slow  # trains a small Stage I run (~20 s CPU)
def test_statistics_are_fitted_when_training_finishes(fitted_run):
    rel = load_reliability(fitted_run)
    assert rel is not None and rel.n_val == 24 and rel.n_train == 96
    assert rel.temperature is not None and 0.05 <= rel.temperature <= 100
    assert rel.ood_threshold is not None and rel.confidence_threshold is not None
    assert rel.means.shape[0] == 3 and rel.precision.shape == (rel.means.shape[1],) * 2
    metrics = json.loads((fitted_run / "metrics_test.json").read_text())
    cal, ood = metrics["calibration"], metrics["ood"]
    assert {"ece", "ece_classwise", "brier", "temperature", "ece_after"} <= set(cal)
    assert cal["temperature"] == pytest.approx(rel.temperature)
    assert 0 <= cal["ece"] <= 1 and 0 <= cal["ece_after"] <= 1
    assert ood["threshold"] == pytest.approx(rel.ood_threshold) and "auroc" not in ood
    assert 0 <= ood["flagged_share"] <= 1
    assert 0 <= metrics["selective"]["aurc"] <= 1
    assert 0 < metrics["selective"]["abstain"]["coverage"] <= 1
    assert (fitted_run / "reliability_test.png").stat().st_size > 1000
    table = pd.read_csv(fitted_run / "predictions_test.csv")
    assert {"ood_score", "energy_score", "out_of_distribution", "answered"} <= set(table.columns)
    # the validation threshold flags at most the stated share of validation films
    val = pd.read_csv(fitted_run / "predictions_val.csv")
    assert (val["ood_score"] > rel.ood_threshold).mean() <= rel.false_flag_rate


@pytest.mark.slow
def test_evaluate_other_data_all_films_writes_auroc(fitted_run, tmp_path, capsys):
    other = make_prepared(tmp_path / "other", n_per_class=4, size=48, seed=7)
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            str(fitted_run),
            "--data",
            str(other),
            "--split",
            "all",
            "--out",
            str(out),
            "--bootstrap",
            "0",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics_all.json").read_text())
    assert metrics["n"] == 12 and metrics["split"] == "all"
    assert 0 <= metrics["ood"]["auroc"] <= 1
    assert metrics["ood"]["reference"] == "the run's own test split"
    assert len(pd.read_csv(out / "predictions_all.csv")) == 12
    assert not (fitted_run / "metrics_all.json").exists()  # the run folder is left alone
    printed = capsys.readouterr().out
    assert "calibration: ECE" in printed and "AUROC vs own test" in printed


def test_small_validation_gives_a_warning_and_no_threshold(tmp_path_factory):
    run = tiny_run(tmp_path_factory)  # 6 validation films
    rel = load_reliability(run)
    assert rel is not None and rel.n_val < MIN_VAL_FILMS
    assert rel.ood_threshold is None and rel.temperature is None
    assert any("no temperature" in w for w in rel.warnings)
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["ood"]["flagged_share"] is None and metrics["calibration"]["ece_after"] is None
    assert metrics["reliability_warnings"] and (run / RELIABILITY_FILE).is_file()
    assert np.isfinite(metrics["calibration"]["ece"])


@pytest.mark.slow
def test_evaluate_calibration_vector_refits_and_applies_it(fitted_run, tmp_path, capsys):
    out = tmp_path / "vec"
    code = main(
        [
            "evaluate",
            str(fitted_run),
            "--calibration",
            "vector",
            "--false-flag-rate",
            "0.1",
            "--out",
            str(out),
            "--bootstrap",
            "0",
        ]
    )
    assert code == 0
    rel = load_reliability(fitted_run)
    assert rel.method == "vector" and rel.vector_scale.shape == (3,) and rel.false_flag_rate == 0.1
    cal = json.loads((out / "metrics_test.json").read_text())["calibration"]
    assert cal["method"] == "vector" and cal["vector_scale"] == pytest.approx(rel.vector_scale)
    assert cal["ece_after"] == pytest.approx(cal["ece_after_by_method"]["vector"])
    assert set(cal["ece_after_by_method"]) == {"temperature", "vector"}
    lo, hi = cal["ece_after_ci"]
    assert lo <= cal["ece_after"] <= hi
    assert 0 < cal["ece_after_floor"]["mean"] <= cal["ece_after_floor"]["hi95"]
    table = pd.read_csv(out / "predictions_test.csv")  # the CSV holds the vector-scaled ones
    printed = capsys.readouterr().out
    assert "vector scaling" in printed and "a perfectly calibrated model would show" in printed
    assert np.isfinite(table[[c for c in table.columns if c.startswith("p_")]].to_numpy()).all()
    assert main(["evaluate", str(fitted_run), "--false-flag-rate", "2"]) == 2
