"""Mahalanobis OOD on synthetic features: separation, thresholds at the false-flag rate."""

from __future__ import annotations

import numpy as np
import pytest

from cxrguide.core.reliability import Reliability
from cxrguide.evaluation import ood


def _features(rng, n, shift=0.0, d=32):
    y = rng.integers(0, 3, n)
    centres = np.eye(3, d) * 4.0
    return centres[y] + rng.normal(0, 1, (n, d)) + shift, y


def test_mahalanobis_separates_a_shifted_set():
    rng = np.random.default_rng(0)
    train, y = _features(rng, 300)
    rel = Reliability()
    rel.means, rel.precision = ood.fit_mahalanobis(train, y, 3)
    internal, _ = _features(rng, 200)
    shifted, _ = _features(rng, 200, shift=np.r_[np.zeros(16), np.full(16, 1.5)])
    auroc = ood.auroc(rel.ood_scores(internal), rel.ood_scores(shifted))
    assert auroc > 0.95
    assert ood.auroc(rel.ood_scores(internal), rel.ood_scores(_features(rng, 200)[0])) < 0.65


@pytest.mark.parametrize("rate", [0.05, 0.1])
def test_threshold_respects_the_false_flag_rate(rate):
    rng = np.random.default_rng(2)
    scores = rng.chisquare(10, 257)
    thr = ood.threshold_at(scores, rate)
    flagged = (scores > thr).mean()
    assert flagged <= rate
    assert flagged >= rate - 2 / len(scores)


def test_auroc_needs_both_sets():
    assert ood.auroc(np.array([]), np.array([1.0])) is None
