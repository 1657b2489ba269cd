"""ECE / Brier against hand computations, temperature scaling, risk-coverage and abstention."""

from __future__ import annotations

import numpy as np
import pytest

from cxrguide.core.reliability import softmax
from cxrguide.evaluation import calibration


def test_ece_and_brier_match_hand_computations():
    # top probabilities 0.9, 0.9, 0.6, 0.6 -> bins (0.867, 0.933] and (0.533, 0.6]
    probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    y = np.array([0, 0, 0, 1])  # hits: yes, no, yes, yes
    # bin 0.9: acc 0.5, conf 0.9 -> 0.4 * 2/4; bin 0.6: acc 1.0, conf 0.6 -> 0.4 * 2/4
    assert calibration.ece(y, probs) == pytest.approx(0.4)
    # Brier: (0.1^2+0.05^2*2) + (0.95^2+0.9^2+0.05^2) + (0.4^2+0.3^2+0.1^2) + (0.3^2+0.4^2+0.1^2)
    hand = (0.015 + 1.715 + 0.26 + 0.26) / 4
    assert calibration.brier(y, probs) == pytest.approx(hand)


def test_classwise_ece_by_hand():
    probs = np.array([[0.8, 0.2, 0.0], [0.8, 0.2, 0.0]])
    y = np.array([0, 1])
    # class 0: conf 0.8 (one bin), freq 0.5 -> 0.3; class 1: conf 0.2, freq 0.5 -> 0.3;
    # class 2: conf 0.0, freq 0 -> 0
    assert calibration.ece_classwise(y, probs) == pytest.approx(0.2)


def test_a_perfectly_calibrated_bin_has_zero_ece():
    probs = np.tile([[0.75, 0.25, 0.0]], (4, 1))
    assert calibration.ece(np.array([0, 0, 0, 1]), probs) == pytest.approx(0.0)


def test_temperature_lowers_nll_on_an_overconfident_set():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (600, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    logits = 4.0 * true_logits  # overconfident: right ranking, far too sharp
    t = calibration.fit_temperature(logits, y)
    assert 3.0 < t < 5.5
    before = calibration.nll(y, softmax(logits))
    after = calibration.nll(y, softmax(logits / t))
    assert after < before - 0.2
    assert calibration.ece(y, softmax(logits / t)) < calibration.ece(y, softmax(logits))


def test_risk_coverage_and_aurc_by_hand():
    probs = np.array([[0.9, 0.1, 0], [0.8, 0.2, 0], [0.7, 0.3, 0], [0.6, 0.4, 0]])
    y = np.array([0, 1, 0, 1])  # errors in confidence order: 0, 1, 0, 1
    coverage, risk, aurc = calibration.risk_coverage(y, probs)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 0.5, 1 / 3, 0.5])
    assert aurc == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    section = calibration.selective_section(y, probs, answered=np.array([1, 1, 0, 0], bool))
    assert section["abstain"] == {"coverage": 0.5, "accuracy_answered": 0.5, "accuracy_all": 0.5}


def test_confidence_threshold_meets_the_target_risk_on_validation():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.34, 1.0, 400)
    hit = rng.uniform(size=400) < conf  # confident films are right more often
    probs = np.stack([conf, (1 - conf) / 2, (1 - conf) / 2], 1)
    y = np.where(hit, 0, 1)
    t = calibration.confidence_threshold(y, probs, target_risk=0.1)
    answered = conf >= t
    assert (~hit[answered]).mean() <= 0.1
    lower = conf >= np.sort(conf[~answered])[-1]  # one film more would break it
    assert (~hit[lower]).mean() > 0.1 or answered.all()


def test_vector_scaling_meets_the_nll_optimality_conditions_exactly():
    """At the NLL minimum of softmax(w * z + b) the gradient is zero: per class, the predicted
    probabilities sum to the class count (bias) and sum_i z_ik (p_ik - y_ik) = 0 (scale)."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, (300, 3))
    y = np.array([rng.choice(3, p=softmax((0.5 * row + [0.3, 0, -0.3])[None])[0]) for row in z])
    w, b = calibration.fit_vector_scaling(z, y)
    p = softmax(z * w + b)
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(p.sum(0), onehot.sum(0), atol=1e-5)
    np.testing.assert_allclose((z * (p - onehot)).sum(0), 0, atol=1e-5)
    assert b.sum() == pytest.approx(0, abs=1e-12)  # centred: the fit is unique
    assert calibration.nll(y, p) <= calibration.nll(y, softmax(z)) - 0.05


def test_ece_interval_brackets_and_repeats():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], 90)
    y = rng.integers(0, 3, 90)
    lo, hi = calibration.ece_interval(y, probs, n_boot=200, seed=1)
    assert lo < calibration.ece(y, probs) < hi
    assert [lo, hi] == calibration.ece_interval(y, probs, n_boot=200, seed=1)


def test_ece_floor_is_what_perfect_calibration_shows_and_shrinks_with_films():
    """Labels drawn from the probabilities themselves are perfectly calibrated, yet their binned
    ECE is positive on a small split; the floor matches that and falls as films grow."""
    rng = np.random.default_rng(0)
    small, large = rng.dirichlet([2, 1, 1], 100), rng.dirichlet([2, 1, 1], 5000)
    f_small, f_large = calibration.ece_floor(small, seed=1), calibration.ece_floor(large, seed=1)
    assert 0.03 < f_small["mean"] < f_small["hi95"] < 0.2
    assert f_large["mean"] < f_small["mean"] / 3
    drawn = [
        calibration.ece(np.array([rng.choice(3, p=p) for p in small]), small) for _ in range(200)
    ]
    assert abs(np.mean(drawn) - f_small["mean"]) < 0.01
    assert calibration.ece_floor(small, seed=1) == f_small  # seeded: repeatable
    # a model that is wrong on purpose lies far above its floor
    flipped = small.argmin(1)
    assert calibration.ece(flipped, small) > 3 * f_small["hi95"]
