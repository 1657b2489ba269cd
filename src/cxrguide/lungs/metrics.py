"""Lung-mask metrics, post-processing and the per-image quality flag.

Metrics are MONAI's (``DiceMetric``, ``MeanIoU``, ``HausdorffDistanceMetric(percentile=95)``)
per image; the means skip nothing except HD95 where a mask is empty (undefined, counted
separately), so one failed image lowers the mean Dice instead of vanishing from it. HD95 is in
pixels of the evaluated masks.

Post-processing keeps the two largest connected components (two lungs; specks and blobs outside
the chest go) and fills holes (an opacity the net missed inside a lung is still lung). The
quality flag lets Stage III report a bad mask instead of using it silently:
``empty`` (almost no lung), ``implausible`` (area outside [min_area, max_area] of the film, or
not two lungs), else ``ok``. Areas are fractions of the film itself, not of the letterboxed
square, when the film's width and height are known.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

FLAGS = ("ok", "empty", "implausible")  # the mask quality flags, in report order

EMPTY_AREA = 0.005  # below this fraction of the film a mask counts as empty


def postprocess(mask: np.ndarray, keep: int = 2) -> np.ndarray:
    """Largest ``keep`` 8-connected components of a bool mask, holes filled (each on its own)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")[:keep] + 1
    out = np.zeros_like(mask, dtype=bool)
    for label in order:
        out |= ndimage.binary_fill_holes(labels == label)
    return out


def count_components(mask: np.ndarray) -> int:
    return int(ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))[1])


def content_fraction(width: int | float, height: int | float) -> float:
    """Share of the letterboxed square covered by the film (1 for square films)."""
    if not width or not height:
        return 1.0
    return min(float(width), float(height)) / max(float(width), float(height))


@dataclass(frozen=True)
class MaskQuality:
    area_fraction: float  # lung pixels / film pixels (after post-processing)
    components: int  # connected components of the raw thresholded mask
    lungs: int  # components kept after post-processing (0, 1 or 2)
    flag: str  # ok | empty | implausible


def quality(
    raw: np.ndarray,
    final: np.ndarray,
    content: float = 1.0,
    min_area: float = 0.05,
    max_area: float = 0.75,
) -> MaskQuality:
    """Flag one mask: ``raw`` thresholded prediction, ``final`` its post-processed version."""
    area = float(final.sum()) / (final.size * max(content, 1e-6))
    lungs = count_components(final)
    if area < EMPTY_AREA:
        flag = "empty"
    elif not min_area <= area <= max_area or lungs != 2:
        flag = "implausible"
    else:
        flag = "ok"
    return MaskQuality(round(area, 4), count_components(raw), lungs, flag)


def segmentation_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image Dice, IoU and HD95 (px) of bool (N, H, W) masks; HD95 NaN if a mask is empty.

    Two empty masks score Dice = IoU = 1 (nothing to find, nothing found).
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[:, None]
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[:, None]
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, t)
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(p, t)
    hd95 = torch.full((len(p),), float("nan"))
    both = (p.flatten(1).any(1) & t.flatten(1).any(1)).nonzero().flatten()
    if len(both):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metric = HausdorffDistanceMetric(include_background=True, percentile=95)
            hd95[both] = metric(p[both], t[both]).flatten().float()
    return {
        "dice": dice.flatten().numpy().astype(np.float64),
        "iou": iou.flatten().numpy().astype(np.float64),
        "hd95": hd95.numpy().astype(np.float64),
    }


def summarize(per_image: dict[str, np.ndarray]) -> dict[str, float | int]:
    """Means (and Dice spread) over images; HD95 over the images where it is defined."""
    dice, iou, hd95 = per_image["dice"], per_image["iou"], per_image["hd95"]
    n = len(dice)
    defined = hd95[np.isfinite(hd95)]
    return {
        "n": int(n),
        "dice_mean": float(dice.mean()) if n else float("nan"),
        "dice_std": float(dice.std()) if n else float("nan"),
        "dice_min": float(dice.min()) if n else float("nan"),
        "iou_mean": float(iou.mean()) if n else float("nan"),
        "hd95_px_mean": float(defined.mean()) if len(defined) else float("nan"),
        "hd95_px_median": float(np.median(defined)) if len(defined) else float("nan"),
        "hd95_undefined": int(n - len(defined)),
    }


def flag_counts(flags, groups) -> pd.DataFrame:
    """Mask flags per group (e.g. per source): one row per group, columns ``n``, ``ok``,
    ``empty``, ``implausible`` and ``bad_share`` (not ok / n), plus an ``all`` row.

    Real films from other hospitals, children or web crops get worse masks than the lung
    model's own test split shows; counting the flags per source says where Stage III runs blind.
    """
    flags, groups = pd.Series(list(flags), dtype=str), pd.Series(list(groups), dtype=str)
    if len(flags) != len(groups):
        raise ValueError(f"flag_counts: {len(flags)} flags but {len(groups)} groups")
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise ValueError(f"flag_counts: unknown flag(s) {', '.join(unknown)}; known: {FLAGS}")
    table = pd.crosstab(groups, flags).reindex(columns=list(FLAGS), fill_value=0)
    table.loc["all"] = table.sum()
    table.insert(0, "n", table.sum(axis=1))
    table["bad_share"] = (1 - table["ok"] / table["n"]).round(4)
    table.index.name, table.columns.name = "group", None
    return table.astype({f: int for f in FLAGS})
