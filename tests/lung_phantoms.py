"""Tiny lung phantoms for the lung-segmentation tests, in the layout ``cxrguide synth`` writes.

``images/<id>.png``, ``masks/<id>.png`` (0 background, 128 patient's right lung = image left,
255 patient's left lung), ``annotations/<id>.json`` (Darwin 1.0 polygons "Right Lung" /
"Left Lung", tag ``PatientID:<n>``), ``metadata.csv`` (image_id, image, mask, label,
patient_id). Lungs are random ellipses inside a brighter body; masks are the polygons
rasterised by Pillow, so they match the JSON exactly.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxrguide.config import LungsPrepareConfig
from cxrguide.lungs.prepare import prepare_lungs


def _ellipse(cx: float, cy: float, rx: float, ry: float, k: int = 48) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return [(float(cx + rx * np.cos(a)), float(cy + ry * np.sin(a))) for a in t]


def phantom(rng: np.random.Generator, width: int, height: int):
    """(uint8 image, uint8 mask 0/128/255, {"Right Lung": pts, "Left Lung": pts})."""
    s = min(width, height)
    cx, cy = width / 2 + rng.uniform(-0.03, 0.03) * s, height / 2 + rng.uniform(-0.03, 0.03) * s
    yy, xx = np.mgrid[:height, :width]
    body = ((xx - cx) / (0.46 * s)) ** 2 + ((yy - cy) / (0.48 * height)) ** 2 <= 1
    img = np.where(body, 0.62, 0.08) + rng.normal(0, 0.04, (height, width))
    polys = {}
    mask_img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask_img)
    for name, sign, value in (("Right Lung", -1, 128), ("Left Lung", 1, 255)):
        rx, ry = s * rng.uniform(0.13, 0.17), height * rng.uniform(0.27, 0.33)
        pts = _ellipse(cx + sign * s * rng.uniform(0.19, 0.22), cy - 0.04 * height, rx, ry)
        polys[name] = pts
        draw.polygon(pts, fill=value, outline=value)
    mask = np.asarray(mask_img)
    img = np.where(mask > 0, img - 0.38 + 0.06 * np.sin(yy / 3.0), img)  # dark lungs + "ribs"
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask, polys


def write_phantoms(root: Path, n: int = 24, size: int = 64, seed: int = 0) -> Path:
    """``n`` films (every 5th one taller than wide), two per patient."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks", "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        width, height = size, (size * 5 // 4 if i % 5 == 4 else size)
        img, mask, polys = phantom(rng, width, height)
        image_id, pid = f"ph{i:03d}", str(i // 2)
        Image.fromarray(img).save(root / "images" / f"{image_id}.png")
        Image.fromarray(mask).save(root / "masks" / f"{image_id}.png")
        ann = {
            "image": {
                "width": width,
                "height": height,
                "filename": f"{image_id}.png",
                "original_filename": f"{image_id}.png",
            },
            "annotations": [
                *(
                    {"name": k, "polygon": {"path": [{"x": x, "y": y} for x, y in v]}}
                    for k, v in polys.items()
                ),
                {"name": f"PatientID:{pid}", "tag": {}},
            ],
        }
        (root / "annotations" / f"{image_id}.json").write_text(json.dumps(ann))
        rows.append([image_id, f"images/{image_id}.png", f"masks/{image_id}.png", "Normal", pid])
    with (root / "metadata.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "image", "mask", "label", "patient_id"])
        writer.writerows(rows)
    return root


def prepared_lung_phantoms(root: Path, n: int, size: int, out: str = "lp") -> Path:
    """``n`` 64-px phantoms under ``root/ph`` run through ``lungs prepare`` at ``size`` px into
    ``root/out``; returns that folder."""

    write_phantoms(root / "ph", n=n, size=64)
    cfg = LungsPrepareConfig(source=[f"masks={root / 'ph'}"], out=root / out, size=size, workers=1)
    return prepare_lungs(cfg).out
