"""Measures of the cross-source study (`bench sources`): what a model knows about hospitals.

Pure functions on arrays, so each can be checked against a hand-computed case:

- :func:`ece`: expected calibration error, top-label, equal-width bins (15 by default; Guo et
  al. 2017). Written here because no calibration module is on this branch yet; one ECE for
  the whole toolkit should replace it when there is one.
- :func:`worst_group_accuracy`: the lowest accuracy over class x source groups large enough to
  say anything (a model that reads the hospital fails the groups where the hospital and the
  class disagree).
- :func:`source_probe`: a linear probe (scikit-learn logistic regression on standardised
  features) predicting the source from penultimate features, vs the majority rule.
- :func:`mahalanobis_auroc`: class-conditional Mahalanobis distance with one Ledoit-Wolf
  shared covariance fitted on training features (Lee et al. 2018); AUROC of "external" vs
  internal test films.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrguide.evaluation import calibration


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE, the one of :func:`cxrguide.evaluation.calibration.ece`; NaN for no films
    (a held-out source with nothing to score)."""
    if len(y) == 0:
        return float("nan")
    return calibration.ece(np.asarray(y), probs, bins)


def worst_group_accuracy(
    y: np.ndarray, pred: np.ndarray, sources: np.ndarray, min_group: int = 1
) -> dict[str, Any]:
    """Lowest accuracy over (class, source) groups with >= ``min_group`` films.

    Returns ``{"accuracy", "group", "n", "groups"}`` (``groups``: how many were counted);
    accuracy NaN when no group is large enough.
    """
    y, pred, sources = np.asarray(y), np.asarray(pred), np.asarray(sources).astype(str)
    worst: dict[str, Any] = {"accuracy": float("nan"), "group": None, "n": 0, "groups": 0}
    for cls in np.unique(y):
        for src in np.unique(sources[y == cls]):
            inside = (y == cls) & (sources == src)
            if inside.sum() < min_group:
                continue
            worst["groups"] += 1
            acc = float((pred[inside] == cls).mean())
            if worst["group"] is None or acc < worst["accuracy"]:
                worst.update(accuracy=acc, group=f"{int(cls)}|{src}", n=int(inside.sum()))
    return worst


def source_probe(
    fit_features: np.ndarray,
    fit_sources: np.ndarray,
    test_features: np.ndarray,
    test_sources: np.ndarray,
    seed: int = 0,
) -> tuple[float, float]:
    """(probe accuracy, majority accuracy) on the test films; the probe is fitted on the fit
    films. Majority: always answer the most frequent source of the fit films."""
    fit_sources = np.asarray(fit_sources).astype(str)
    test_sources = np.asarray(test_sources).astype(str)
    values, counts = np.unique(fit_sources, return_counts=True)
    majority = float((test_sources == values[counts.argmax()]).mean())
    if len(values) < 2:  # one source only: nothing to tell apart
        return majority, majority
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(np.asarray(fit_features, dtype=np.float64), fit_sources)
    accuracy = float((probe.predict(np.asarray(test_features, np.float64)) == test_sources).mean())
    return accuracy, majority


def mahalanobis_scores(
    fit_features: np.ndarray, fit_labels: np.ndarray, features: np.ndarray
) -> np.ndarray:
    """Distance of each film to its nearest class mean under one shared Ledoit-Wolf
    covariance fitted on the class-centred fit features (larger: further from training)."""
    fit = np.asarray(fit_features, dtype=np.float64)
    labels = np.asarray(fit_labels)
    classes = np.unique(labels)
    means = np.stack([fit[labels == c].mean(0) for c in classes])
    centred = fit - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    x = np.asarray(features, dtype=np.float64)
    d = np.stack([np.einsum("ij,jk,ik->i", x - m, precision, x - m) for m in means], axis=1)
    return d.min(1)


def mahalanobis_auroc(
    fit_features: np.ndarray,
    fit_labels: np.ndarray,
    internal_features: np.ndarray,
    external_features: np.ndarray,
) -> float:
    """AUROC of the Mahalanobis score separating external (positive) from internal films."""
    if len(internal_features) == 0 or len(external_features) == 0:
        return float("nan")
    scores = mahalanobis_scores(
        fit_features, fit_labels, np.concatenate([internal_features, external_features])
    )
    truth = np.r_[np.zeros(len(internal_features)), np.ones(len(external_features))]
    return float(roc_auc_score(truth, scores))
