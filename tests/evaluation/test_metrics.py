from __future__ import annotations

import numpy as np
import pytest

from cxrguide.evaluation.metrics import classification_report, format_report, point_metrics


def _probs(pred: list[int], confidence: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), 3), (1 - confidence) / 2)
    p[np.arange(len(pred)), pred] = confidence
    return p


def test_known_confusion_gives_hand_computed_metrics():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = [0, 0, 1, 1, 2, 2, 2, 0]
    m = point_metrics(y, _probs(pred))
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    normal = m["per_class"]["Normal"]
    assert normal["precision"] == pytest.approx(2 / 3) and normal["recall"] == pytest.approx(2 / 3)
    assert normal["specificity"] == pytest.approx(4 / 5)  # 5 non-Normal, 1 called Normal
    assert m["per_class"]["Pneumonia"]["support"] == 2


def test_perfect_predictions_and_ci():
    y = np.repeat([0, 1, 2], 10)
    r = classification_report(y, _probs(list(y)), groups=np.array(["a", "b"] * 15), n_boot=50)
    assert r["accuracy"] == 1.0 and r["macro_auc"] == 1.0
    assert r["ci95"]["accuracy"] == [1.0, 1.0]
    assert set(r["per_source"]) == {"a", "b"}
    assert "accuracy" in format_report(r)


def test_ci_brackets_the_estimate_and_missing_class_auc_is_none():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)  # no COVID-19 at all
    p = rng.dirichlet(np.ones(3), 60)
    r = classification_report(y, p, n_boot=200)
    lo, hi = r["ci95"]["accuracy"]
    assert lo <= r["accuracy"] <= hi
    assert r["per_class"]["COVID-19"]["auc"] is None
