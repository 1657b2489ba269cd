"""Fit a run's reliability statistics and score a split with them (``evaluate``).

Where it is fitted: lazily, by the first ``evaluate`` of a run without ``reliability.safetensors``
(:func:`ensure_reliability`), always on the run's own prepared data (``RunInfo.data``), whatever
``--data`` says. Training's :data:`~cxrguide.training.stage_run.Scorer` evaluates ``val`` right
after saving the run, so a freshly trained run has them when training finishes; an older run
gets them at its next ``evaluate``. Stage I runs read their train / val features from the Stage
I feature cache (one pass for nothing when it is current); other runs need one forward pass
over train.

What is fitted (:class:`~cxrguide.core.reliability.Reliability`): the temperature and the
vector scaling on validation logits (``calibration`` names the one applied), Mahalanobis class
means + Ledoit-Wolf precision on train features, and from validation the OOD / energy
thresholds (features L2-normalised) at ``false_flag_rate`` and the ``--abstain`` confidence at
``target_risk``. With fewer than :data:`~cxrguide.core.reliability.MIN_VAL_FILMS` validation
films there is no temperature and no threshold, with a stated warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrguide.core.reliability import (
    MIN_VAL_FILMS,
    Reliability,
    energy_scores,
    load_reliability,
    save_reliability,
    softmax,
)
from cxrguide.core.runs import RunInfo
from cxrguide.data.completion import is_complete
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.evaluation import calibration, ood
from cxrguide.labels import CLASSES
from cxrguide.models.classifier import CxrClassifier
from cxrguide.training.features import pooled_features

_log = logging.getLogger(__name__)


@torch.no_grad()
def forward_split(
    model: CxrClassifier,
    dataset: CxrDataset,
    device: torch.device,
    *,
    batch_size: int = 32,
    use_lungs: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits ``(N, K)``, pooled penultimate features ``(N, D)`` and manifest rows, in order."""
    logits, feats, rows = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress, leave=False):
        x = batch["image"].to(device)
        lung = batch["lung"].to(device) if use_lungs else None
        z, f = model.logits_and_features(x, lung)
        logits.append(z.float().cpu().numpy())
        feats.append(f.float().cpu().numpy())
        rows.append(batch["index"].numpy())
    return np.concatenate(logits), np.concatenate(feats), np.concatenate(rows)


def _stage1_cache(
    model: CxrClassifier,
    info: RunInfo,
    run_dir: Path,
    prepared: Prepared,
    device: torch.device,
    rows: np.ndarray,
) -> np.ndarray | None:
    """Stage I's cached pooled features for ``rows`` (its frozen body never changed)."""
    if info.stage != 1 or info.lung_gate:
        return None

    config = run_dir / "config.yaml"
    precision = (
        (yaml.safe_load(config.read_text()) or {}).get("precision", "fp32")
        if config.is_file()
        else "fp32"
    )
    shown, model.weights_source = model.weights_source, info.weights_source  # the cache's key
    try:
        feats = pooled_features(
            model, prepared, info.image_size, device, rows=rows, precision=precision, progress=False
        )
    except OSError:  # a read-only prepared folder: no cache, one forward pass instead
        return None
    finally:
        model.weights_source = shown
    return np.asarray(feats[rows], np.float32)


def split_outputs(model, info, run_dir, prepared, device, split, batch_size):
    """(logits, features, labels) of a split of the run's own data."""
    rows = prepared.rows(split)
    labels = CxrDataset(prepared, rows=rows, image_size=info.image_size).labels[rows]
    feats = _stage1_cache(model, info, run_dir, prepared, device, rows)
    if feats is not None:
        with torch.no_grad():
            logits = model.head.to(device)(torch.from_numpy(feats).to(device)).float().cpu().numpy()
        return logits, feats, labels
    data = CxrDataset(prepared, rows=rows, image_size=info.image_size, with_lungs=info.lung_gate)
    logits, feats, _ = forward_split(
        model, data, device, batch_size=batch_size, use_lungs=info.lung_gate, progress=False
    )
    return logits, feats, labels


def fit_reliability(
    run_dir: Path,
    model: CxrClassifier,
    info: RunInfo,
    device: torch.device,
    *,
    batch_size: int = 32,
    false_flag_rate: float = 0.05,
    target_risk: float = 0.05,
    method: str = "temperature",
) -> Reliability:
    """Fit and save the run's statistics on its own train and val splits (``method``: the
    calibration applied; both are fitted)."""
    prepared = Prepared.open(info.data)
    rel = Reliability(false_flag_rate=false_flag_rate, target_risk=target_risk, calibration=method)
    _, f_train, y_train = split_outputs(model, info, run_dir, prepared, device, "train", batch_size)
    rel.feature_norm = "l2"  # chosen on an internal proxy (docs/calibration.md)
    rel.means, rel.precision = ood.fit_mahalanobis(
        rel.prepare_features(f_train), y_train, len(CLASSES)
    )
    rel.n_train = len(y_train)
    z_val, f_val, y_val = split_outputs(model, info, run_dir, prepared, device, "val", batch_size)
    rel.n_val = len(y_val)
    if rel.n_val < MIN_VAL_FILMS:
        rel.warnings.append(
            f"validation has {rel.n_val} films (< {MIN_VAL_FILMS}): no temperature, "
            "no OOD or abstention threshold; 'reliable' rests on the other flags"
        )
        _log.warning("%s: %s", run_dir, rel.warnings[-1])
    else:
        rel.temperature = calibration.fit_temperature(z_val, y_val)
        rel.vector_scale, rel.vector_bias = calibration.fit_vector_scaling(
            z_val, y_val, init_temperature=rel.temperature
        )
        rel.ood_threshold = ood.threshold_at(rel.ood_scores(f_val), false_flag_rate)
        rel.energy_threshold = ood.threshold_at(energy_scores(z_val), false_flag_rate)
        rel.confidence_threshold = calibration.confidence_threshold(
            y_val, rel.scale(z_val), target_risk
        )
    save_reliability(run_dir, rel)
    return rel


def ensure_reliability(
    run_dir: Path,
    model: CxrClassifier,
    info: RunInfo,
    device: torch.device,
    batch_size: int = 32,
    *,
    calibration: str | None = None,
    false_flag_rate: float | None = None,
) -> Reliability | None:
    """The run's statistics, fitted now when missing and its own data is at hand (else None);
    refitted when ``calibration`` / ``false_flag_rate`` ask for other than what is stored."""
    rel = load_reliability(run_dir)
    if rel is not None and not _asks_other(rel, calibration, false_flag_rate):
        return rel
    if rel is not None and info.data and is_complete(info.data):
        return fit_reliability(
            run_dir,
            model,
            info,
            device,
            batch_size=batch_size,
            false_flag_rate=false_flag_rate or rel.false_flag_rate,
            target_risk=rel.target_risk,
            method=calibration or rel.calibration,
        )
    if rel is not None:
        _log.warning(
            "%s: its prepared data %r is not at hand: keeping the stored statistics",
            run_dir,
            info.data,
        )
        return rel
    if not info.data or not is_complete(info.data):
        _log.warning(
            "%s: no reliability statistics and its prepared data %r is not at hand: "
            "uncalibrated, no OOD score",
            run_dir,
            info.data,
        )
        return None
    return fit_reliability(
        run_dir,
        model,
        info,
        device,
        batch_size=batch_size,
        false_flag_rate=false_flag_rate or 0.05,
        method=calibration or "temperature",
    )


def _asks_other(rel: Reliability, calibration: str | None, false_flag_rate: float | None) -> bool:
    other_cal = calibration is not None and (
        calibration != rel.calibration or (calibration == "vector" and rel.vector_scale is None)
    )
    return other_cal or (false_flag_rate is not None and false_flag_rate != rel.false_flag_rate)


def calibration_section(
    y: np.ndarray, logits: np.ndarray, rel: Reliability | None
) -> dict[str, Any]:
    """``metrics.calibration``: ECE / Brier before (plain softmax) and after the temperature."""
    raw = softmax(np.asarray(logits, np.float64))
    out: dict[str, Any] = {
        "ece": calibration.ece(y, raw),
        "ece_ci": calibration.ece_interval(y, raw),
        "ece_floor": calibration.ece_floor(raw),
        "ece_classwise": calibration.ece_classwise(y, raw),
        "brier": calibration.brier(y, raw),
        "nll": calibration.nll(y, raw),
        "temperature": None if rel is None else rel.temperature,
        "n_bins": calibration.N_BINS,
        "method": None if rel is None else rel.method,
        "vector_scale": None
        if rel is None or rel.vector_scale is None
        else rel.vector_scale.tolist(),
        "vector_bias": None if rel is None or rel.vector_bias is None else rel.vector_bias.tolist(),
        "reliability": {"before": calibration.reliability_bins(y, raw)},
    }
    if rel is not None and rel.calibrated:
        after = rel.scale(logits)
        out.update(
            ece_after=calibration.ece(y, after),
            ece_after_ci=calibration.ece_interval(y, after),
            ece_after_floor=calibration.ece_floor(after),
            ece_classwise_after=calibration.ece_classwise(y, after),
            brier_after=calibration.brier(y, after),
            nll_after=calibration.nll(y, after),
        )
        out["reliability"]["after"] = calibration.reliability_bins(y, after)
        # ECE after each fitted map, whichever is applied: "before -> after" for both
        out["ece_after_by_method"] = {
            m: calibration.ece(y, rel.scale(logits, m))
            for m in ("temperature", "vector")
            if m == "temperature" or rel.vector_scale is not None
        }
    else:
        out.update(
            ece_after=None,
            ece_after_ci=None,
            ece_after_floor=None,
            ece_classwise_after=None,
            brier_after=None,
            nll_after=None,
        )
    return out


def ood_section(
    rel: Reliability | None,
    scores: np.ndarray | None,
    energies: np.ndarray,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """``metrics.ood``: threshold, share flagged, and with ``reference`` (the run's own test
    films' Mahalanobis and energy scores) the AUROC of these films against them."""
    if rel is None or scores is None:
        return {"threshold": None, "flagged_share": None, "note": "no OOD statistics"}
    out: dict[str, Any] = {
        "threshold": rel.ood_threshold,
        "false_flag_rate": rel.false_flag_rate,
        "flagged_share": None
        if rel.ood_threshold is None
        else float((scores > rel.ood_threshold).mean()),
        "score_median": float(np.median(scores)),
        "energy": {
            "threshold": rel.energy_threshold,
            "flagged_share": None
            if rel.energy_threshold is None
            else float((energies > rel.energy_threshold).mean()),
        },
    }
    if reference is not None:
        out["auroc"] = ood.auroc(reference[0], scores)
        out["energy"]["auroc"] = ood.auroc(reference[1], energies)
        out["reference"] = "the run's own test split"
    return out
