"""The audit's outside-lung probe: with the lungs blanked out, can the class (or source) be told?

Each film's lung region (the bounding box of its lung mask, widened by ``margin`` of the side,
so the mask's own outline carries no information) is set to black; what remains (shoulders,
neck, markers, devices, borders, text) is shrunk to ``side`` x ``side`` pixels plus a 16-bin
histogram of the remaining pixels. A scikit-learn logistic regression on those features is
scored by seeded, patient-grouped, stratified 5-fold cross-validation for two targets: the
class and the source. It is ``outside_lung_signal`` when the accuracy's Wilson 95% lower bound
is above the majority share of that target *and* the accuracy beats it by >= ``MIN_GAIN``
(5 points): then the data carries a shortcut outside the lungs that any CNN can find.

Optionally a third target, a model's answers (``predictions_<split>.csv``): on the films of
that CSV, the probe predicts the model's ``predicted`` class and, with the same folds, the true
class. ``predictions_follow_outside_lung`` (same rule) says the model's decisions can be told
from outside the lungs; agreement above the true-class accuracy says they follow those cues
more than the disease does.

Films whose mask is empty are left out (counted); with no mask cache the probe is skipped with
the reason.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cxrguide.data import cache

MIN_GAIN = 0.05
N_FOLDS = 5


def blank_lungs(image: np.ndarray, mask: np.ndarray, margin: float) -> np.ndarray | None:
    """The image with the widened lung bounding box set to 0 (None when the mask is empty)."""
    ys, xs = np.nonzero(mask > 127)
    if len(ys) == 0:
        return None
    pad = int(round(margin * image.shape[0]))
    out = image.copy()
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, image.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, image.shape[1])
    out[y0:y1, x0:x1] = 0
    return out


def probe_features(image: np.ndarray, blanked: np.ndarray, side: int) -> np.ndarray:
    """Thumbnail of the blanked film (area filter) + histogram of the pixels left outside."""
    thumb = np.asarray(Image.fromarray(blanked).resize((side, side), Image.Resampling.BOX))
    outside = image[blanked > 0] if (blanked > 0).any() else np.zeros(1, np.uint8)
    hist = np.histogram(outside, bins=16, range=(0, 256))[0] / max(len(outside), 1)
    return np.concatenate([thumb.ravel() / 255.0, hist]).astype(np.float32)


def cross_validated(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> dict[str, Any]:
    """Grouped, stratified k-fold accuracy of a logistic regression, vs the majority share."""
    from scipy.stats import binomtest
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    values, counts = np.unique(y, return_counts=True)
    if len(values) < 2:
        return {"skipped": f"only one value ({values[0] if len(values) else 'none'}) to predict"}
    folds = min(N_FOLDS, len(np.unique(groups)), int(counts.max()))
    if folds < 2:
        return {"skipped": "too few patients for cross-validation"}
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small classes: sklearn warns per fold
            pred = cross_val_predict(model, x, y, groups=groups, cv=cv)
    except ValueError as err:  # a training fold left with one value
        return {"skipped": f"cross-validation impossible here ({err})"}
    n, k = len(y), int((pred == y).sum())
    ci = binomtest(k, n).proportion_ci(method="wilson")
    baseline = float(counts.max() / n)
    acc = k / n
    return {
        "n": n,
        "folds": folds,
        "accuracy": acc,
        "ci95": [float(ci.low), float(ci.high)],
        "majority_share": baseline,
        "majority": str(values[np.argmax(counts)]),
        "signal": bool(ci.low > baseline and acc - baseline >= MIN_GAIN),
    }


def outside_lung_probe(
    prep: Path,
    manifest: pd.DataFrame,
    size: int,
    masks_path: Path,
    *,
    seed: int = 0,
    side: int = 24,
    margin: float = 0.04,
    max_images: int = 4000,
    predictions: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The probe's report (``class``, ``source`` and, given ``predictions`` (image_id,
    predicted, file), ``predictions`` targets), or ``skipped`` with the reason."""
    if not masks_path.is_file():
        return {
            "skipped": f"no lung masks at {masks_path} (give --lungs RUN, or run 'cxrguide "
            f"lungs predict RUN --data {prep}' first)"
        }
    masks = cache.open_readonly(masks_path)
    if masks.shape[0] != len(manifest) or masks.shape[1:] != (size, size):
        return {
            "skipped": f"{masks_path}: {masks.shape[0]} masks of {masks.shape[1]} px do not "
            f"match the {len(manifest)} images of {size} px"
        }
    images = cache.open_readonly(cache.image_cache_path(prep, size))
    rows = np.arange(len(manifest))
    if len(rows) > max_images:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_images, replace=False))
    predicted_rows = _predicted_rows(manifest, predictions)
    features: dict[int, np.ndarray | None] = {}
    for i in sorted(set(rows.tolist()) | set(predicted_rows)):  # the subset + the model's films
        img = np.asarray(images[i])
        blanked = blank_lungs(img, np.asarray(masks[i]), margin)
        features[i] = None if blanked is None else probe_features(img, blanked, side)
    kept = [int(i) for i in rows if features[int(i)] is not None]
    feats = [features[i] for i in kept]
    report: dict[str, Any] = {
        "masks": str(masks_path),
        "images": len(kept),
        "empty_masks": int(len(rows) - len(kept)),
        "side": side,
        "margin": margin,
        "model": f"logistic regression (C=0.05), {N_FOLDS}-fold patient-grouped CV",
    }
    if len(kept) < 2 * N_FOLDS:
        report["skipped"] = f"only {len(kept)} films with a lung mask"
        return report
    sub = manifest.iloc[kept]
    x = np.stack(feats)
    groups = (sub["patient_id"] if "patient_id" in sub else sub["image_id"]).astype(str).to_numpy()
    for target, column in (("class", "label"), ("source", "site")):
        report[target] = cross_validated(x, sub[column].astype(str).to_numpy(), groups, seed)
    if predictions is not None:
        report["predictions"] = predictions_target(
            manifest, predictions, predicted_rows, features, seed
        )
    return report


def _predicted_rows(manifest: pd.DataFrame, predictions: pd.DataFrame | None) -> dict[int, str]:
    """Manifest row -> the model's answer, for the films in ``predictions`` that are in PREP."""
    if predictions is None:
        return {}
    where = dict(zip(manifest["image_id"].astype(str), range(len(manifest)), strict=True))
    return {
        where[i]: str(p)
        for i, p in zip(predictions["image_id"].astype(str), predictions["predicted"], strict=True)
        if i in where
    }


def predictions_target(
    manifest: pd.DataFrame,
    predictions: pd.DataFrame,
    rows: dict[int, str],
    features: dict[int, np.ndarray | None],
    seed: int,
) -> dict[str, Any]:
    """The probe on the model's answers and, same films and folds, on the true class."""
    files = sorted(set(predictions["file"].astype(str)))
    report: dict[str, Any] = {
        "files": files,
        "rows": int(len(predictions)),
        "not_in_prep": int(len(predictions) - len(rows)),
    }
    kept = [i for i in sorted(rows) if features[i] is not None]
    report["empty_masks"] = len(rows) - len(kept)
    if len(kept) < 2 * N_FOLDS:
        report["skipped"] = (
            f"only {len(kept)} of the {len(predictions)} predicted films are in "
            f"PREP with a lung mask (the probe needs >= {2 * N_FOLDS})"
        )
        return report
    answers = np.array([rows[i] for i in kept])
    truth = manifest["label"].astype(str).to_numpy()[kept]
    sub = manifest.iloc[kept]
    groups = (sub["patient_id"] if "patient_id" in sub else sub["image_id"]).astype(str).to_numpy()
    x = np.stack([features[i] for i in kept])
    result = cross_validated(x, answers, groups, seed)
    report.update(result)
    report["model_accuracy"] = float((answers == truth).mean())
    if "skipped" not in result:
        report["true_class"] = cross_validated(x, truth, groups, seed)
    return report


def probe_warnings(probe: dict[str, Any]) -> list[dict[str, Any]]:
    """``outside_lung_signal`` per data target; ``predictions_follow_outside_lung``."""
    out = []
    for target in ("class", "source"):
        r = probe.get(target, {})
        if r.get("signal"):
            out.append(
                {
                    "code": "outside_lung_signal",
                    "target": target,
                    "accuracy": r["accuracy"],
                    "majority_share": r["majority_share"],
                    "message": f"with the lungs blanked out, a small classifier tells the "
                    f"{target} at {100 * r['accuracy']:.1f}% (95% CI "
                    f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}) against "
                    f"{100 * r['majority_share']:.1f}% by guessing the most "
                    f"common {target}: the films carry {target} cues outside the "
                    "lungs",
                }
            )
    r = probe.get("predictions", {})
    if r.get("signal"):
        truth = r.get("true_class", {}).get("accuracy")
        versus = (
            ""
            if truth is None
            else f"; it tells the true class of the same films at {100 * truth:.1f}%"
        )
        out.append(
            {
                "code": "predictions_follow_outside_lung",
                "target": "predictions",
                "files": r["files"],
                "accuracy": r["accuracy"],
                "majority_share": r["majority_share"],
                "true_class_accuracy": truth,
                "message": f"with the lungs blanked out, a small classifier agrees with the "
                f"model's answers ({', '.join(r['files'])}) on "
                f"{100 * r['accuracy']:.1f}% of {r['n']} films (95% CI "
                f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}) against "
                f"{100 * r['majority_share']:.1f}% by always guessing the "
                f"model's most common answer{versus}: the model's decisions can "
                "be told from outside the lungs",
            }
        )
    return out
