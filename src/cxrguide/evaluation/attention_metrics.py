"""Where a classifier looks: Grad-CAM energy inside the lungs (and inside true lesions).

For each image the Grad-CAM of its *predicted* class (what the model actually used) is taken
at the model's input size, min-max normalised like pytorch-grad-cam's figures, and compared with
a region mask R at the same size:

- energy share  E = sum(A * R) / sum(A): 1 means all attention inside R; about the area
  fraction of R for a map that ignores anatomy;
- pointing game: whether the CAM's maximum lies inside R.

``lungs.area_share`` (the lungs' mean share of the image) is the energy share's chance level.

R is the lung mask of the prepared set's lung cache (``cxrguide lungs predict``) and, for
synthetic phantoms, the exact lesion mask the generator wrote (``SOURCE/lesions/<id>.png``,
letterboxed like the image cache). A map that is zero everywhere (ReLU removed every positive
contribution) has no energy to share: it is counted as ``empty_cams`` and left out, never
scored as 0. Without lung masks the section says why it was skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrguide.attention.gradcam import model_cam
from cxrguide.config import load_yaml
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.data.imaging import fit_square
from cxrguide.data.transforms import resize_mask
from cxrguide.labels import CLASSES


def energy_share(cam: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(N, H, W) maps and boolean regions -> (N,) share of map mass inside; NaN for empty maps."""
    cam = cam.reshape(len(cam), -1).astype(np.float64)
    region = region.reshape(len(region), -1).astype(bool)
    total = cam.sum(1)
    inside = (cam * region).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def pointing_game(cam: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(N,) 1.0 where the map's maximum lies inside the region, 0.0 outside, NaN if empty."""
    flat = cam.reshape(len(cam), -1)
    peak = flat.argmax(1)
    hit = region.reshape(len(region), -1)[np.arange(len(flat)), peak].astype(float)
    return np.where(flat.max(1) > 0, hit, np.nan)


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean and distribution of the finite values (NaNs are the empty maps, counted apart)."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return {"n": 0}
    q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "n": int(len(v)),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "q10": float(q[0]),
        "q25": float(q[1]),
        "median": float(q[2]),
        "q75": float(q[3]),
        "q90": float(q[4]),
        "max": float(v.max()),
    }


def _region_report(
    energy: np.ndarray, points: np.ndarray, labels: np.ndarray, source: str
) -> dict[str, Any]:
    found = np.isfinite(points)
    by_class = {
        name: summarize(energy[labels == k]).get("mean", float("nan"))
        for k, name in enumerate(CLASSES)
        if (labels == k).any()
    }
    return {
        "source": source,
        "energy": summarize(energy),
        "pointing_game": float(points[found].mean()) if found.any() else float("nan"),
        "empty_cams": int((~found).sum()),
        "energy_mean_by_class": by_class,
    }


def lesion_roots(prepared: Prepared) -> dict[str, Path]:
    """Source roots of synthetic sources (manifest ``source`` -> folder), from prepare's config."""
    config = prepared.root / "prepare_config.yaml"
    specs = load_yaml(config).get("source", []) if config.exists() else []
    roots = {}
    for spec in specs or []:
        kind, _, path = str(spec).partition("=")
        if kind.strip() != "synthetic":
            continue
        # a relative PATH was relative to where prepare ran: try there, then beside PREP
        given = Path(path).expanduser()
        for root in (given, prepared.root / given, prepared.root.parent / given):
            if (root / "lesions").is_dir():
                roots[kind.strip()] = root
                break
    return roots


def lesion_mask(
    prepared: Prepared, row: int, size: int, roots: dict[str, Path]
) -> np.ndarray | None:
    """The generator's lesion mask of manifest ``row`` aligned with the input, or None."""
    rec = prepared.manifest.iloc[row]
    root = roots.get(str(rec["source"]))
    if root is None:
        return None
    path = root / "lesions" / f"{Path(str(rec['path'])).stem}.png"
    if not path.is_file():
        return None
    mask = np.asarray(Image.open(path).convert("L")) > 127
    square = fit_square(mask.astype(np.uint8), prepared.size, mask=True)
    return resize_mask(torch.from_numpy(square), size).numpy()


def attention_report(
    model: torch.nn.Module,
    prepared: Prepared,
    split: str,
    image_size: int,
    device: torch.device,
    *,
    lung_gate: bool = False,
    batch_size: int = 32,
    max_images: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Lung (and lesion) energy and pointing game of ``split``; see the module docstring.

    ``max_images`` > 0 scores a seeded random subset of that many images (faster evaluation).
    """
    has_lungs = prepared.lung_cache_path.exists()
    roots = lesion_roots(prepared)
    report: dict[str, Any] = {"target": "predicted class", "image_size": image_size}
    if not has_lungs:
        report["lungs"] = {
            "skipped": f"no lung masks at {prepared.lung_cache_path} (run "
            f"'cxrguide lungs predict RUN --data {prepared.root}')"
        }
        if lung_gate:
            return report
    if not has_lungs and not roots:
        report["lesions"] = {"skipped": "no synthetic source with lesion masks"}
        return report
    rows = prepared.rows(split)
    if 0 < max_images < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_images, replace=False))
    ds = CxrDataset(prepared, rows=rows, image_size=image_size, with_lungs=has_lungs)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    lung_e, lung_p, les_e, les_p, les_rows, labels = [], [], [], [], [], []
    lung_area: list[np.ndarray] = []  # chance level of the energy share: the lungs' area share
    model.eval()
    for batch in tqdm(loader, desc="grad-cam", unit="batch", disable=not progress, leave=False):
        x = batch["image"].to(device)
        gate = batch["lung"].to(device) if lung_gate else None
        _, cam = model_cam(model, x, None, gate)
        cam = cam[:, 0].float().cpu().numpy()
        labels.append(batch["label"].numpy())
        if has_lungs:
            lung = batch["lung"][:, 0].numpy() > 0.5
            lung_e.append(energy_share(cam, lung))
            lung_p.append(pointing_game(cam, lung))
            lung_area.append(lung.reshape(len(lung), -1).mean(1))
        for j, row in enumerate(batch["index"].tolist()):
            mask = lesion_mask(prepared, row, image_size, roots) if roots else None
            if mask is not None and mask.any():
                les_e.append(energy_share(cam[j : j + 1], mask[None])[0])
                les_p.append(pointing_game(cam[j : j + 1], mask[None])[0])
                les_rows.append(len(np.concatenate(labels)) - len(cam) + j)
    y = np.concatenate(labels)
    report["images"] = int(len(y))
    if has_lungs:
        report["lungs"] = _region_report(
            np.concatenate(lung_e), np.concatenate(lung_p), y, str(prepared.lung_cache_path)
        )
        report["lungs"]["area_share"] = float(np.concatenate(lung_area).mean())
    if roots:
        if les_e:
            report["lesions"] = _region_report(
                np.array(les_e), np.array(les_p), y[les_rows], "synthetic lesion masks"
            )
        else:
            report["lesions"] = {"skipped": f"no {split} image has a lesion mask"}
    else:
        report["lesions"] = {"skipped": "no synthetic source with lesion masks"}
    return report
