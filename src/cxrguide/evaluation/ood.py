"""Out-of-distribution statistics: Mahalanobis fit (Ledoit-Wolf), thresholds, AUROC.

The score itself (and the energy score) is applied by :mod:`cxrguide.core.reliability`, which
predict, serve and evaluate share; this module fits what it needs on the run's train and
validation features. Thresholds come from validation, never train: on train the distances are
optimistic (a train 95th-percentile threshold flagged 64 % of internal test films in a check).
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score


def fit_mahalanobis(
    features: np.ndarray, y: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(K, D)`` and the precision ``(D, D)`` of the shared (class-centred)
    Ledoit-Wolf covariance. A class with no train film gets the overall mean."""
    f = np.asarray(features, np.float64)
    y = np.asarray(y)
    overall = f.mean(axis=0)
    means = np.stack(
        [f[y == k].mean(axis=0) if (y == k).any() else overall for k in range(n_classes)]
    )
    centred = f - means[y]
    cov = LedoitWolf(assume_centered=True).fit(centred)
    return means, cov.precision_


def threshold_at(scores: np.ndarray, false_flag_rate: float) -> float:
    """The smallest validation score with at most ``false_flag_rate`` of validation above it."""
    return float(
        np.quantile(np.asarray(scores, np.float64), 1.0 - false_flag_rate, method="higher")
    )


def auroc(internal: np.ndarray, other: np.ndarray) -> float | None:
    """AUROC of ``other`` (positive) vs ``internal`` films by score; None if either is empty."""
    if len(internal) == 0 or len(other) == 0:
        return None
    labels = np.r_[np.zeros(len(internal)), np.ones(len(other))]
    return float(roc_auc_score(labels, np.r_[internal, other]))
