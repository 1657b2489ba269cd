"""A run's ``reliability.safetensors``: temperature, OOD statistics and thresholds.

Fitted by :mod:`cxrguide.evaluation.reliability` (on the run's own train / val splits) and read
by evaluation, the predictor, ``serve`` and the ONNX export, which sit in sibling layers: so the
file's format and the arithmetic that applies it live here, once.

- Calibration, one affine map of the logits applied everywhere (:meth:`Reliability.affine`):
  ``temperature`` (one scalar T: ``softmax(logits / T)``) or vector scaling (``vector_scale``
  ``w`` and ``vector_bias`` ``b`` per class: ``softmax(w * logits + b)``). Both are fitted on
  validation; ``calibration`` names the one applied.
- Mahalanobis OOD score (Lee et al. 2018): ``min_k (f - mu_k)^T P (f - mu_k)`` over the class
  means ``mu_k`` of the penultimate (pooled, gated) features of the train films and the
  precision ``P`` of their shared Ledoit-Wolf covariance. Higher = further from training data.
  With ``feature_norm: l2`` (every fit since 2026-12-08) each feature vector is divided by its
  L2 norm first, for the statistics and the scored film alike (docs/calibration.md).
- Energy score (Liu et al. 2020): ``-logsumexp(logits)`` on the raw logits, a second opinion
  that needs no features (reported, never flags).
- ``ood_threshold`` / ``energy_threshold``: the validation quantile at ``1 - false_flag_rate``;
  ``confidence_threshold``: the lowest calibrated top probability at which ``predict --abstain``
  still answers. Thresholds are None when validation had too few films.

The file is safetensors (tensors + a JSON metadata string): loading it runs no code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_save
from cxrguide.labels import CLASSES

RELIABILITY_FILE = "reliability.safetensors"
CALIBRATIONS = ("temperature", "vector")
MIN_VAL_FILMS = 20  # fewer validation films: no thresholds (a stated warning)
_log = logging.getLogger(__name__)


@dataclass
class Reliability:
    """What a run knows about its own limits (see the module docstring)."""

    temperature: float | None = None
    vector_scale: np.ndarray | None = None  # (K,) per-class scale w of vector scaling
    vector_bias: np.ndarray | None = None  # (K,) per-class bias b (centred: sums to 0)
    calibration: str = "temperature"  # which fitted map is applied: temperature | vector
    means: np.ndarray | None = None  # (K, D) class means of train features
    precision: np.ndarray | None = None  # (D, D) inverse shared covariance
    ood_threshold: float | None = None
    energy_threshold: float | None = None
    confidence_threshold: float | None = None
    feature_norm: str = "none"  # "l2": features scaled to unit length before the distance
    false_flag_rate: float = 0.05
    target_risk: float = 0.05
    n_train: int = 0
    n_val: int = 0
    warnings: list[str] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def calibrated(self) -> bool:
        return self.method is not None

    @property
    def method(self) -> str | None:
        """The calibration applied: ``vector``, ``temperature`` or None (plain softmax)."""
        if self.calibration == "vector" and self.vector_scale is not None:
            return "vector"
        return "temperature" if self.temperature is not None else None

    def affine(self, method: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(w, b)``, each ``(K,)``, with calibrated logits ``w * logits + b``: the one rule
        evaluate, predict, serve and the ONNX export share (``method`` overrides the applied one;
        temperature is ``w = 1 / T``, ``b = 0``; none is ``w = 1``, ``b = 0``)."""
        method = self.method if method is None else method
        k = len(self.vector_scale) if self.vector_scale is not None else len(CLASSES)
        if method == "vector" and self.vector_scale is not None:
            return (
                np.asarray(self.vector_scale, np.float64),
                np.asarray(self.vector_bias, np.float64),
            )
        t = self.temperature if method == "temperature" and self.temperature else 1.0
        return np.full(k, 1.0 / t), np.zeros(k)

    @property
    def has_ood(self) -> bool:
        return self.means is not None and self.precision is not None

    def scale(self, logits: np.ndarray, method: str | None = None) -> np.ndarray:
        """Calibrated softmax of ``(N, K)`` logits (plain softmax when nothing is fitted)."""
        w, b = self.affine(method)
        return softmax(np.asarray(logits, np.float64) * w + b)

    def ood_scores(self, features: np.ndarray) -> np.ndarray | None:
        """Mahalanobis scores ``(N,)`` of pooled features ``(N, D)``; None without statistics."""
        if not self.has_ood:
            return None
        w, centres = self._whitened()
        z = self.prepare_features(features) @ w  # one (D, D) product per film for all classes
        d2 = ((z[:, None, :] - centres[None]) ** 2).sum(axis=2, dtype=np.float64)
        return d2.min(axis=1)

    def prepare_features(self, features: np.ndarray) -> np.ndarray:
        """Features as the statistics see them (unit length under ``feature_norm: l2``)."""
        f = np.asarray(features, np.float32)
        if self.feature_norm == "l2":
            f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        return f

    def _whitened(self) -> tuple[np.ndarray, np.ndarray]:
        """``W`` with ``W W^T = P`` (Cholesky) and the class means mapped by it, computed once:
        then ``(f - mu)^T P (f - mu) = |f W - mu W|^2`` (a naive per-class product took 16 ms per
        film at D = 1280 here, this < 1 ms)."""
        if "w" not in self._cache:
            p = np.asarray(self.precision, np.float64)
            try:
                w = np.linalg.cholesky(p)
            except np.linalg.LinAlgError:  # not positive definite after rounding: eigh instead
                vals, vecs = np.linalg.eigh((p + p.T) / 2)
                w = vecs * np.sqrt(np.clip(vals, 0, None))
            # float32 for the per-film product (float64 doubled its cost; scores agree to ~1e-6)
            self._cache["w"] = w.astype(np.float32)
            self._cache["centres"] = (np.asarray(self.means, np.float64) @ w).astype(np.float32)
        return self._cache["w"], self._cache["centres"]

    def flags(self, scores: np.ndarray | None) -> np.ndarray | None:
        """True where a score is above the OOD threshold; None without a threshold."""
        if scores is None or self.ood_threshold is None:
            return None
        return np.asarray(scores) > self.ood_threshold

    def metadata(self) -> dict:
        vec = None if self.vector_scale is None else [float(v) for v in self.vector_scale]
        bias = None if self.vector_bias is None else [float(v) for v in self.vector_bias]
        return {
            "temperature": self.temperature,
            "vector_scale": vec,
            "vector_bias": bias,
            "calibration": self.calibration,
            "feature_norm": self.feature_norm,
            "ood_threshold": self.ood_threshold,
            "energy_threshold": self.energy_threshold,
            "confidence_threshold": self.confidence_threshold,
            "false_flag_rate": self.false_flag_rate,
            "target_risk": self.target_risk,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "warnings": self.warnings,
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def energy_scores(logits: np.ndarray) -> np.ndarray:
    """``-logsumexp(logits)`` per row (raw logits): higher = less like the training data."""
    z = np.asarray(logits, np.float64)
    top = z.max(axis=1)
    return -(top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def save_reliability(run_dir: str | Path, rel: Reliability) -> Path:
    """Write ``reliability.safetensors`` atomically."""

    tensors = {}
    if rel.has_ood:
        tensors["means"] = np.ascontiguousarray(rel.means, np.float64)
        tensors["precision"] = np.ascontiguousarray(rel.precision, np.float64)
    meta = {"cxrguide_reliability": json.dumps(rel.metadata())}
    path = Path(run_dir) / RELIABILITY_FILE
    blob = save(tensors, metadata=meta)
    atomic_save(lambda fh: fh.write(blob), path)
    return path


def load_reliability(run_dir: str | Path) -> Reliability | None:
    """The run's statistics, or None for a run without them (trained before they existed)."""

    path = Path(run_dir) / RELIABILITY_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = json.loads((fh.metadata() or {})["cxrguide_reliability"])
            arrays = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    except (SafetensorError, KeyError, ValueError, OSError) as err:
        raise CxrGuideError(f"{path}: unreadable reliability statistics ({err})") from err
    known = set(Reliability.__dataclass_fields__) - {"means", "precision"}
    rel = Reliability(**{k: v for k, v in meta.items() if k in known})
    if (
        (rel.vector_scale is None) != (rel.vector_bias is None)
        or rel.calibration not in CALIBRATIONS
        or rel.feature_norm not in ("none", "l2")
    ):
        raise CxrGuideError(f"{path}: vector_scale/vector_bias/calibration are inconsistent")
    if rel.vector_scale is not None:
        rel.vector_scale = np.asarray(rel.vector_scale, np.float64)
        rel.vector_bias = np.asarray(rel.vector_bias, np.float64)
    rel.means, rel.precision = arrays.get("means"), arrays.get("precision")
    if rel.means is not None and (
        rel.precision is None
        or rel.means.ndim != 2
        or rel.precision.shape != (rel.means.shape[1],) * 2
    ):
        raise CxrGuideError(f"{path}: means/precision shapes do not match")
    return rel


def describe_missing(run_dir: str | Path) -> str:
    """The one warning line for a run without statistics."""
    return (
        f"{run_dir}: no {RELIABILITY_FILE} (run trained before calibration/OOD existed): "
        f"probabilities are uncalibrated and ood_score is null; "
        f"'cxrguide evaluate RUN' fits them"
    )


def warn_missing(run_dir: str | Path) -> None:
    _log.warning(describe_missing(run_dir))
