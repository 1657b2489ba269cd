"""`cxrguide lungs predict`: lung masks for a classifier's prepared set, or for single files.

``--data PREP`` segments every row of a folder written by ``cxrguide prepare`` straight from its
image cache and writes ``PREP/cache/lungs_<size>.npy`` (uint8 0/255, row i = manifest row i, the
same letterboxed square as the image cache), ``PREP/lung_quality.csv`` (image_id,
area_fraction, components, lungs, flag) and ``lungs_<size>.json`` next to the cache (which run
and checkpoint made it, threshold, flag counts), so Stage III can check what it is using. The
mask cache is written to a temporary file and renamed, so a killed run never leaves a
half-written cache behind. ``manifest.csv`` is not touched. ``--overlay DIR`` also draws every
row's mask on its cached image (the letterboxed square Stage III sees) as
``<row>_<stem>_overlay.png``, row = manifest row = ``lung_quality.csv`` row, for review.

``IMAGE...`` reads each file with the project's reader, letterboxes it like the cache,
segments it, maps the probabilities back to the file's own pixel grid and post-processes there;
``--out`` writes ``<stem>_lungs.png`` masks and ``--overlay`` ``<stem>_overlay.png`` pictures.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from cxrguide.config import LungsPredictConfig, load_yaml
from cxrguide.core.device import resolve_device
from cxrguide.data import cache
from cxrguide.data.completion import require_complete
from cxrguide.data.imaging import fit_square, read_image, to_uint8
from cxrguide.data.transforms import resize_array
from cxrguide.errors import ConfigError, CxrGuideError, ImageReadError
from cxrguide.files import (
    atomic_open,
    atomic_path,
    atomic_save,
    atomic_write_json,
    check_writable_dir,
)
from cxrguide.lungs.metrics import MaskQuality, content_fraction
from cxrguide.lungs.records import lung_cache_path
from cxrguide.lungs.segmenter import (
    finish_mask,
    inference_batch,
    load_lung_run,
    predict_batch,
    run_checkpoint,
)
from cxrguide.lungs.unet import LungSegmenter

QUALITY_FILE = "lung_quality.csv"
QUALITY_COLUMNS = ["image_id", "area_fraction", "components", "lungs", "flag"]


@dataclass
class PreparedPrediction:
    masks: Path
    quality: Path
    n: int
    flags: dict[str, int]
    overlays: Path | None = None  # the folder of per-row overlay PNGs, when asked for


@dataclass
class ImagePrediction:
    path: str
    quality: MaskQuality | None
    mask_file: Path | None = None
    overlay_file: Path | None = None
    error: str = ""


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def segment_cache(
    model: LungSegmenter,
    images: np.ndarray,
    model_size: int,
    device: torch.device,
    threshold: float = 0.5,
    batch_size: int = 16,
    contents: list[float] | None = None,
    min_area: float = 0.05,
    max_area: float = 0.75,
) -> Iterator[tuple[int, np.ndarray, MaskQuality]]:
    """(row, post-processed mask, quality) for each row of a square image cache, in order."""
    for start in range(0, len(images), batch_size):
        probs = predict_batch(model, images[start : start + batch_size], model_size, device)
        for k, prob in enumerate(probs):
            content = contents[start + k] if contents is not None else 1.0
            _, final, q = finish_mask(prob, threshold, content, min_area, max_area)
            yield start + k, final, q


def predict_prepared(cfg: LungsPredictConfig) -> PreparedPrediction:
    """Masks for every image of a classifier-prepared folder, aligned with its image cache."""
    assert cfg.run is not None and cfg.data is not None
    prep = Path(cfg.data)
    manifest, config = prep / "manifest.csv", prep / "prepare_config.yaml"
    require_complete(prep, "prepare")
    if not manifest.is_file() or not config.is_file():
        raise CxrGuideError(f"{prep}: not a folder written by 'cxrguide prepare'")
    size = int(load_yaml(config).get("size", 0))
    images_path = cache.image_cache_path(prep, size)
    if not images_path.is_file():
        raise CxrGuideError(f"{images_path}: image cache missing (rerun 'cxrguide prepare')")
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "lung_fraction" in rows[0] and cfg.out is None:
        raise CxrGuideError(
            f"{prep}: is a 'lungs prepare' folder; its lungs cache holds the annotations. "
            "Give --out DIR to write predictions elsewhere"
        )
    images = cache.open_readonly(images_path)
    if len(images) != len(rows):
        raise CxrGuideError(f"{images_path}: {len(images)} rows but manifest has {len(rows)}")
    out = Path(cfg.out) if cfg.out else None
    quality_path = (out or prep) / QUALITY_FILE
    masks_path = out / f"lungs_{size}.npy" if out else lung_cache_path(prep, size)
    masks_path.parent.mkdir(parents=True, exist_ok=True)
    overlays = check_writable_dir(cfg.overlay, "overlay") if cfg.overlay is not None else None
    model, train_cfg = load_lung_run(cfg.run)
    threshold = cfg.threshold if cfg.threshold is not None else train_cfg.threshold
    device = resolve_device(cfg.device)
    model.to(device)

    found: list[list] = []
    contents = [content_fraction(r.get("width") or 0, r.get("height") or 0) for r in rows]
    bar = tqdm(total=len(rows), desc="lungs", unit="img", disable=None)  # quiet off a terminal
    batch = inference_batch(cfg.batch_size, device)
    with atomic_path(masks_path) as tmp:
        masks = cache.create(tmp, max(len(rows), 1), size)
        for i, final, q in segment_cache(
            model,
            images,
            train_cfg.size,
            device,
            threshold,
            batch,
            contents,
            cfg.min_area,
            cfg.max_area,
        ):
            masks[i] = final.astype(np.uint8) * 255
            if overlays is not None:
                picture = Image.fromarray(overlay(np.asarray(images[i]), final))
                name = overlay_name(i, rows[i].get("path") or rows[i]["image_id"])
                atomic_save(lambda fh, pic=picture: pic.save(fh, format="PNG"), overlays / name)
            found.append([rows[i]["image_id"], q.area_fraction, q.components, q.lungs, q.flag])
            bar.update()
        bar.close()
        masks.flush()
        del masks
    with atomic_open(quality_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(QUALITY_COLUMNS)
        writer.writerows(found)
    flags = dict(Counter(r[-1] for r in found))
    checkpoint = run_checkpoint(Path(cfg.run))
    assert checkpoint is not None  # load_lung_run found it above
    provenance = {
        "run": str(Path(cfg.run).resolve()),
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": _sha256(checkpoint),
        "threshold": threshold,
        "model_size": train_cfg.size,
        "size": size,
        "n": len(rows),
        "flags": flags,
        "min_area": cfg.min_area,
        "max_area": cfg.max_area,
    }
    atomic_write_json(masks_path.with_suffix(".json"), provenance)
    return PreparedPrediction(masks_path, quality_path, len(rows), flags, overlays)


def overlay_name(row: int, path: str) -> str:
    """``<row>_<file stem>_overlay.png``: the row keeps names unique and in manifest order."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem) or "image"
    return f"{row:06d}_{stem}_overlay.png"


def unletterbox(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """Undo :func:`fit_square` on a (S, S) probability map: back to ``height`` x ``width``.

    A probability map is an image for the resize rule (:mod:`cxrguide.data.transforms`):
    bilinear when enlarged to the film (the usual case), area when shrunk, and thresholded only
    afterwards, at the film's resolution, so the mask edge follows the interpolated probability.
    """
    side = max(height, width)
    square = resize_array(np.asarray(prob, dtype=np.float32), side)
    top, left = (side - height) // 2, (side - width) // 2
    return square[top : top + height, left : left + width]


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8: the film in gray, lungs tinted red, their outline yellow."""
    gray = to_uint8(image).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[mask, 0] = 0.55 * rgb[mask, 0] + 0.45 * 255
    rgb[mask, 1:] *= 0.7
    edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(mask.shape) // 300))
    rgb[edge] = (255, 230, 0)
    return rgb.astype(np.uint8)


def _unique_stem(path: Path, used: Counter) -> str:
    used[path.stem] += 1
    return path.stem if used[path.stem] == 1 else f"{path.stem}_{used[path.stem]}"


def predict_images(cfg: LungsPredictConfig) -> list[ImagePrediction]:
    """Masks (and overlays) for image files at their own resolution; unreadable files reported."""
    assert cfg.run is not None
    if not cfg.images:
        raise ConfigError("images: give image files or --data PREP")
    model, train_cfg = load_lung_run(cfg.run)
    threshold = cfg.threshold if cfg.threshold is not None else train_cfg.threshold
    device = resolve_device(cfg.device)
    model.to(device)
    for folder in (cfg.out, cfg.overlay):
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
    results: list[ImagePrediction] = []
    used: Counter = Counter()
    batch = inference_batch(cfg.batch_size, device)
    for start in range(0, len(cfg.images), batch):
        loaded: list[tuple[str, np.ndarray]] = []
        for path in cfg.images[start : start + batch]:
            try:
                img, _ = read_image(path)
            except ImageReadError as err:
                results.append(ImagePrediction(str(path), None, error=err.reason))
                continue
            loaded.append((str(path), img))
        if not loaded:
            continue
        squares = np.stack([fit_square(img, train_cfg.size) for _, img in loaded])
        probs = predict_batch(model, squares, train_cfg.size, device)
        for (path, img), prob in zip(loaded, probs, strict=True):
            _, final, q = finish_mask(
                unletterbox(prob, *img.shape), threshold, 1.0, cfg.min_area, cfg.max_area
            )
            result = ImagePrediction(path, q)
            stem = _unique_stem(Path(path), used)
            if cfg.out is not None:
                result.mask_file = Path(cfg.out) / f"{stem}_lungs.png"
                Image.fromarray(final.astype(np.uint8) * 255).save(result.mask_file)
            if cfg.overlay is not None:
                result.overlay_file = Path(cfg.overlay) / f"{stem}_overlay.png"
                Image.fromarray(overlay(img, final)).save(result.overlay_file)
            results.append(result)
    order = {p: i for i, p in enumerate(map(str, cfg.images))}
    return sorted(results, key=lambda r: order.get(r.path, 0))
