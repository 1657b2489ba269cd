"""`cxrguide lungs prepare`: lung annotations -> image + mask caches and a patient-grouped split.

Output (``--out DIR``), in the shape of the classifier's ``prepare`` so the same cache helpers
read it:

* ``manifest.csv``: image_id, source, path, patient_id, width, height, lung_fraction, sided,
  ignore_fraction, sha256, split, cache_index (row i = cache row i).
* ``cache/images_<size>.npy`` (uint8 gray) and ``cache/lungs_<size>.npy`` (uint8 0/255), both
  letterboxed to a square by :func:`~cxrguide.data.imaging.fit_square` (the one resize rule of
  :mod:`cxrguide.data.transforms`; the mask by majority vote), so mask row i lies on image row i.
* ``rejected.csv`` (source, path, stage, reason): unreadable images, annotations without a lung,
  size mismatches, exact duplicates (the first copy is kept, the patients are merged).
* ``prepare_config.yaml``, ``summary.json``.

The split is 8:1:1 by default, grouped by patient (a patient's films never straddle splits) and
stratified by source, with the classifier's greedy :func:`~cxrguide.data.manifest.assign_splits`.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxrguide.config import LungsPrepareConfig, save_yaml
from cxrguide.data import cache, completion, manifest
from cxrguide.data.completion import CONFIG_FILE, check_out_dir
from cxrguide.data.imaging import fit_square, read_image, to_uint8
from cxrguide.data.sources.base import Rejection
from cxrguide.data.workers import unordered
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.lungs.readers import load_mask, open_lung_source
from cxrguide.lungs.records import LungRecord, lung_cache_path
from cxrguide.lungs.v7 import NotDarwinError

MANIFEST_COLUMNS = [
    "image_id",
    "source",
    "path",
    "patient_id",
    "width",
    "height",
    "lung_fraction",
    "sided",
    "ignore_fraction",
    "sha256",
    "split",
    "cache_index",
]
ASPECT_TOLERANCE = 0.01


@dataclass
class LungsPrepareResult:
    out: Path
    n_images: int
    split_counts: dict[str, int]
    n_rejected: int
    reused: bool = False


def _decode(task: tuple) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """Worker: read one image and its annotation; cache-sized image and mask, or a reason."""
    idx, record, size, max_pixels, min_side, ignore = task
    row: dict = {"idx": idx, "reason": ""}
    try:
        img, info = read_image(record.file, max_pixels=max_pixels, min_side=min_side)
        with open(record.file, "rb") as fh:
            row["sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
        h, w = img.shape
        if record.size and record.size != (w, h):
            aw, ah = record.size
            if abs(aw / ah - w / h) > ASPECT_TOLERANCE * (w / h):
                row["reason"] = f"image is {w}x{h} but the annotation is for {aw}x{ah}"
                return row, None, None
        mask = load_mask(record, h, w)
    except (CxrGuideError, NotDarwinError, OSError) as err:
        row["reason"] = getattr(err, "reason", None) or str(err)
        return row, None, None
    lung = mask.lung & ~mask.ignore if ignore == "background" else mask.lung
    if not lung.any():
        row["reason"] = "annotation has no lung pixels"
        return row, None, None
    row.update(
        width=w,
        height=h,
        lung_fraction=round(float(lung.mean()), 4),
        sided=int(mask.sided),
        ignore_fraction=round(float((mask.ignore & mask.lung).mean()), 4),
    )
    square = fit_square(lung.astype(np.uint8) * 255, size, mask=True)
    return row, to_uint8(fit_square(img, size)), square


def _scan(cfg: LungsPrepareConfig) -> tuple[list[LungRecord], list[tuple]]:
    if not cfg.source:
        raise ConfigError("source: give at least one --source v7=PATH or masks=PATH")
    records: list[LungRecord] = []
    rejected: list[tuple] = []
    for spec in cfg.source:
        kind, _, path = spec.partition("=")
        for item in open_lung_source(kind, path).scan():
            if isinstance(item, Rejection):
                rejected.append((item.source, item.path, "annotation", item.reason))
            else:
                records.append(item)
    return records, rejected


def _decode_all(cfg, records, work: Path) -> tuple[list[dict], np.ndarray, np.ndarray]:
    work.mkdir(parents=True, exist_ok=True)
    n = max(len(records), 1)
    images = cache.create(work / "images.npy", n, cfg.size)
    masks = cache.create(work / "masks.npy", n, cfg.size)
    tasks = [
        (i, r, cfg.size, cfg.max_pixels, cfg.min_side, cfg.ignore) for i, r in enumerate(records)
    ]
    workers = cfg.workers or os.cpu_count() or 1
    rows: list[dict] = [{} for _ in records]
    results = (
        unordered(_decode, tasks, workers, what="lungs prepare")
        if workers > 1 and len(tasks) > 1
        else map(_decode, tasks)
    )  # a killed worker: one line, no hang (data.workers)
    for row, img, mask in tqdm(results, total=len(tasks), desc="decode", unit="img", disable=None):
        if img is not None:
            images[row["idx"]], masks[row["idx"]] = img, mask
        rows[row["idx"]] = row
    return rows, images, masks


def _split(cfg, records, kept: list[int], links: list[tuple[int, int]]) -> dict[int, str]:
    """Patient-grouped (duplicates link patients) split, stratified by source."""
    uf = manifest.disjoint_set(len(records))
    first: dict[str, int] = {}
    for i, r in enumerate(records):
        uf.merge(first.setdefault(r.patient_id, i), i)
    for a, b in links:
        uf.merge(a, b)
    groups: dict[int, manifest.SplitGroup] = {}
    for i in kept:
        r = records[i]
        g = groups.setdefault(uf[i], manifest.SplitGroup(key=r.image_id, strata={}))
        g.key = min(g.key, r.image_id)
        g.strata[(r.source, "lung")] = g.strata.get((r.source, "lung"), 0) + 1
    ratios = (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
    totals = Counter(records[i].source for i in kept)
    targets = {(s, "lung"): manifest.split_targets(n, ratios) for s, n in totals.items()}
    by_key = manifest.assign_splits(list(groups.values()), targets, cfg.seed)
    return {i: by_key[groups[uf[i]].key] for i in kept}


def prepare_lungs(cfg: LungsPrepareConfig) -> LungsPrepareResult:
    """Scan, decode, de-duplicate, split and cache; reuses a finished identical run."""
    if cfg.out is None:
        raise ConfigError("out: give --out DIR")
    out = Path(cfg.out)
    records, rejected = _scan(cfg)
    if check_out_dir(out, cfg, "lungs prepare", ("manifest.csv", "summary.json")):
        summary = completion.read_summary(out, "lungs prepare")
        return LungsPrepareResult(
            out, summary["images"], summary["splits"], summary["rejected"], reused=True
        )
    if not records:
        raise CxrGuideError(f"{', '.join(cfg.source)}: no image with a lung annotation found")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / CONFIG_FILE)
    rows, images, masks = _decode_all(cfg, records, out / ".work")

    kept: list[int] = []
    links: list[tuple[int, int]] = []
    first_by_sha: dict[str, int] = {}
    for i in range(len(records)):  # --source order: the first copy of a duplicate wins
        r, row = records[i], rows[i]
        if row["reason"]:
            rejected.append((r.source, r.path, "image", row["reason"]))
            continue
        j = first_by_sha.setdefault(row["sha256"], i)
        if j != i:
            rejected.append((r.source, r.path, "duplicate", f"same file as {records[j].image_id}"))
            links.append((i, j))
            continue
        kept.append(i)
    with (out / "rejected.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source", "path", "stage", "reason"])
        writer.writerows(rejected)
    if not kept:
        first = rejected[-1][-1] if rejected else "?"
        raise CxrGuideError(f"{out / 'rejected.csv'}: every image was rejected (e.g. {first})")
    split_of = _split(cfg, records, kept, links)
    order = sorted(kept, key=lambda i: records[i].image_id)
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for k, i in enumerate(order):
            r, row = records[i], rows[i]
            writer.writerow(
                [
                    r.image_id,
                    r.source,
                    r.path,
                    r.patient_id,
                    row["width"],
                    row["height"],
                    row["lung_fraction"],
                    row["sided"],
                    row["ignore_fraction"],
                    row["sha256"],
                    split_of[i],
                    k,
                ]
            )
    cache.gather(images, order, cache.image_cache_path(out, cfg.size))
    cache.gather(masks, order, lung_cache_path(out, cfg.size))
    del images, masks
    splits = dict(Counter(split_of[i] for i in order))
    summary = {
        "images": len(order),
        "splits": splits,
        "rejected": len(rejected),
        "size": cfg.size,
        "sided": sum(int(rows[i]["sided"]) for i in order),
    }
    completion.mark_complete(out, summary)  # last: the folder is finished only now
    shutil.rmtree(out / ".work", ignore_errors=True)
    return LungsPrepareResult(out, len(order), splits, len(rejected))
