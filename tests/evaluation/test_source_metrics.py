"""The cross-source study's measures against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from cxrguide.evaluation.source_metrics import (
    ece,
    mahalanobis_auroc,
    mahalanobis_scores,
    source_probe,
    worst_group_accuracy,
)


def test_ece_by_hand():
    # confidences 0.9, 0.9 (one right) -> bin (0.867, 0.933]: |0.5 - 0.9| * 2/4
    # confidences 0.5, 0.5 (both right) -> bin (0.467, 0.533]: |1.0 - 0.5| * 2/4
    probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    y = np.array([0, 0, 0, 1])
    assert ece(probs, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.5)
    perfect = np.eye(3)[[0, 1, 2]]
    assert ece(perfect, np.array([0, 1, 2])) == 0.0
    assert np.isnan(ece(np.zeros((0, 3)), np.zeros(0)))
    # one bin only: ECE = |accuracy - mean confidence|
    assert ece(probs[:2], y[:2], bins=1) == pytest.approx(abs(0.5 - 0.9))


def test_worst_group_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 0, 0, 1, 2])
    src = np.array(["A", "A", "B", "A", "A", "B", "B", "A"])
    # groups: 0|A 2/2, 0|B 0/1, 1|A 1/2, 1|B 1/2, 2|A 1/1
    w = worst_group_accuracy(y, pred, src)
    assert (w["accuracy"], w["group"], w["n"], w["groups"]) == (0.0, "0|B", 1, 5)
    w2 = worst_group_accuracy(y, pred, src, min_group=2)  # 0|B and 2|A too small
    assert (w2["accuracy"], w2["groups"]) == (0.5, 3)
    assert w2["group"] in ("1|A", "1|B")
    assert np.isnan(worst_group_accuracy(y, pred, src, min_group=10)["accuracy"])


def test_source_probe_reads_a_separable_source_and_reports_the_majority():
    rng = np.random.default_rng(0)
    fit = np.r_[rng.normal(0, 1, (30, 4)), rng.normal(5, 1, (10, 4))]
    fit_src = np.array(["A"] * 30 + ["B"] * 10)
    test = np.r_[rng.normal(0, 1, (6, 4)), rng.normal(5, 1, (4, 4))]
    test_src = np.array(["A"] * 6 + ["B"] * 4)
    acc, majority = source_probe(fit, fit_src, test, test_src)
    assert acc == 1.0 and majority == 0.6  # majority: always "A" (fit's most frequent)
    same = source_probe(fit, ["A"] * 40, test, ["A"] * 10)
    assert same == (1.0, 1.0)  # one source: nothing to probe
    noise_acc, _ = source_probe(
        rng.normal(0, 1, (40, 4)), fit_src, rng.normal(0, 1, (10, 4)), test_src
    )
    assert noise_acc < 1.0


def test_mahalanobis_scores_match_the_formula_and_separate_a_shifted_set():
    rng = np.random.default_rng(1)
    fit = np.r_[rng.normal(0, 1, (50, 3)), rng.normal(3, 1, (50, 3))]
    labels = np.r_[np.zeros(50), np.ones(50)]
    x = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])
    means = np.stack([fit[:50].mean(0), fit[50:].mean(0)])
    centred = fit - means[labels.astype(int)]
    p = LedoitWolf(assume_centered=True).fit(centred).precision_
    expected = [min((v - m) @ p @ (v - m) for m in means) for v in x]
    assert mahalanobis_scores(fit, labels, x) == pytest.approx(expected)
    internal = rng.normal(0, 1, (40, 3))
    external = rng.normal(8, 1, (40, 3))
    assert mahalanobis_auroc(fit, labels, internal, external) == 1.0
    same = mahalanobis_auroc(fit, labels, internal, rng.normal(0, 1, (40, 3)))
    assert 0.3 < same < 0.7
    assert np.isnan(mahalanobis_auroc(fit, labels, internal, np.zeros((0, 3))))
