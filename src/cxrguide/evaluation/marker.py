"""Does a model read the burned-in marker? The shortcut_test measures beside lung energy.

Synthetic phantoms (``cxrguide synth --shortcut-test N``) carry a ``shortcut_test`` split whose
films hold a marker at *another* class's place. On those films:

- ``follows_marker``: share of predictions naming the marker's class;
- ``erased_accuracy``: accuracy with each marker painted out (filled with the median of a
  3-px ring around it): what the model reads when the marker is gone;
- ``marker_energy``: Grad-CAM energy in the marker box (what the map shows);
- ``marker_saliency``: share of the input gradient |d s / d I| of the predicted class in the box
  (what the network depends on, receptive fields included).

Why beside lung energy: in the shortcut benchmark (README) the lung gate puts 97-100% of CAM
maxima in the lungs while the model follows the marker as often as Stage II does. Lung energy
says where the map is, not what decides; these figures do. The benchmark
(:mod:`cxrguide.experiments.shortcut`) and ``evaluate`` both use this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxrguide.attention.gradcam import model_cam
from cxrguide.core.runs import RunInfo
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.evaluation.attention_metrics import energy_share, lesion_roots
from cxrguide.labels import CLASSES
from cxrguide.models.saved import load_run

SPLIT = "shortcut_test"
MARKER_PAD = 2  # px around the marker box counted as "marker"
MARKER_COLUMNS = ("marker_target_class", "marker_x0", "marker_y0", "marker_x1", "marker_y1")
LUNG_ENERGY_NOTE = (
    "Lung energy says where the Grad-CAM lies, not what decides: in the shortcut benchmark a "
    "lung gate put 97-100% of CAM maxima in the lungs while the model followed the marker as "
    "often as Stage II. follows_marker and the painted-out accuracy on shortcut_test are the "
    "evidence; lung energy alone is not."
)


def paint_out(images: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """Fill each marker box with the median of a 3-px ring around it (the local background)."""
    out = images.clone()
    for j in range(len(out)):
        box = torch.from_numpy(boxes[j]).to(out.device)
        ys, xs = np.nonzero(boxes[j])
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        ring = torch.zeros_like(box)
        ring[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = True
        ring &= ~box
        out[j, 0][box] = out[j, 0][ring].median() if ring.any() else 0.0
    return out


def marker_metadata(prepared: Prepared) -> tuple[pd.DataFrame, Path] | None:
    """The generator's marker table and folder when the set has a shortcut_test split."""
    if not (prepared.manifest["split"] == SPLIT).any():
        return None
    for root in lesion_roots(prepared).values():
        path = root / "metadata.csv"
        if path.is_file():
            meta = pd.read_csv(path, keep_default_na=False)
            if set(MARKER_COLUMNS) <= set(meta.columns):
                return meta.set_index("image_id"), root
    return None


def marker_scores(
    model: torch.nn.Module,
    info: RunInfo,
    prepared: Prepared,
    meta: pd.DataFrame,
    device: torch.device,
    batch_size: int = 32,
) -> dict[str, float]:
    """The shortcut_test figures of the module doc (plus ``accuracy`` and ``n``)."""
    gated = info.lung_gate
    ds = CxrDataset(prepared, SPLIT, image_size=info.image_size, with_lungs=gated)
    follows, right, erased_right, energy, saliency = [], [], [], [], []
    scale = info.image_size / prepared.size  # synth size == cache size (square films)
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
        gate = batch["lung"].to(device) if gated else None
        images = batch["image"].to(device)
        logits, cam = model_cam(model, images, None, gate)
        cam = cam[:, 0].cpu().numpy()
        pred = logits.argmax(1)
        boxes = np.zeros(cam.shape, bool)
        for j, row in enumerate(batch["index"].tolist()):
            m = meta.loc[Path(prepared.manifest.path[row]).stem]
            follows.append(CLASSES[int(pred[j])] == m["marker_target_class"])
            x0, y0, x1, y1 = (
                int(round(float(m[k]) * scale))
                for k in ("marker_x0", "marker_y0", "marker_x1", "marker_y1")
            )
            boxes[
                j,
                max(0, y0 - MARKER_PAD) : y1 + MARKER_PAD,
                max(0, x0 - MARKER_PAD) : x1 + MARKER_PAD,
            ] = True
        energy.append(energy_share(cam, boxes))
        with torch.enable_grad():
            x = images.detach().requires_grad_()
            score = model(x, gate).gather(1, pred.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, x)
        saliency.append(energy_share(grad.abs()[:, 0].cpu().numpy(), boxes))
        with torch.no_grad():
            painted = model(paint_out(images, boxes), gate).argmax(1)
        right.append((pred.cpu() == batch["label"]).numpy())
        erased_right.append((painted.cpu() == batch["label"]).numpy())
    e, g = np.concatenate(energy), np.concatenate(saliency)
    return {
        "n": int(len(follows)),
        "accuracy": float(np.mean(np.concatenate(right))),
        "follows_marker": float(np.mean(follows)),
        "erased_accuracy": float(np.mean(np.concatenate(erased_right))),
        "marker_energy": float(np.nanmean(e)) if np.isfinite(e).any() else float("nan"),
        "marker_saliency": float(np.nanmean(g)) if np.isfinite(g).any() else float("nan"),
    }


def marker_report(run: Path, prepared: Prepared, synth: Path, device: torch.device) -> dict:
    """:func:`marker_scores` of a run folder, the markers read from ``synth/metadata.csv``."""
    model, info = load_run(run, device)
    meta = pd.read_csv(synth / "metadata.csv", keep_default_na=False).set_index("image_id")
    scores = marker_scores(model, info, prepared, meta, device)
    return {
        k: scores[k]
        for k in ("follows_marker", "erased_accuracy", "marker_energy", "marker_saliency")
    }


def shortcut_section(
    model: torch.nn.Module, info: RunInfo, prepared: Prepared, device: torch.device
) -> dict[str, Any] | None:
    """``evaluate``'s ``shortcut`` section, or None when the set has no marked shortcut_test."""
    found = marker_metadata(prepared)
    if found is None:
        return None
    meta, root = found
    section: dict[str, Any] = marker_scores(model, info, prepared, meta, device)
    section.update(split=SPLIT, markers=str(root / "metadata.csv"), note=LUNG_ENERGY_NOTE)
    return section
