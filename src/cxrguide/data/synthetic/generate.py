"""Plan a synthetic dataset, draw it in parallel, and write it in the layout every step reads.

``DIR/images/<id>.png``, ``DIR/masks/<id>.png`` (0 / 128 right lung / 255 left lung),
``DIR/lesions/<id>.png`` (0/255), ``DIR/annotations/<id>.json`` (V7 Darwin, the two lung
polygons, so ``DIR`` is also a lung-segmentation root), ``DIR/metadata.csv`` and
``DIR/synth_config.yaml``. The plan (labels, patients, styles, views, marker positions) is made
up front from the seed; each film then depends only on its plan entry, so any worker count gives
the same bytes, and a re-run skips films whose files are complete instead of redrawing them.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from cxrguide.config import SynthConfig
from cxrguide.data.synthetic.markers import CLASS_POSITIONS, KINDS, POSITIONS
from cxrguide.data.synthetic.render import Case, CaseSpec, render_case
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_open, atomic_write_text
from cxrguide.labels import CLASSES

GENERATOR_VERSION = 1  # bump whenever the drawing changes, so old folders are not mixed in
SHORTCUT_TEST = "shortcut_test"
SPLIT_CODES = {"": 0, SHORTCUT_TEST: 1}
PAIR_RATE = 0.15  # share of main-set patients with a second film
AP_RATE = 0.3
CONTENT_FIELDS = ("n", "size", "seed", "shortcut_rate", "styles", "shortcut_test")
COLUMNS = (
    "image_id",
    "image",
    "mask",
    "lesion",
    "annotation",
    "label",
    "patient_id",
    "view",
    "style",
    "marker_kind",
    "marker_position",
    "marker_class_specific",
    "marker_target_class",
    "marker_x0",
    "marker_y0",
    "marker_x1",
    "marker_y1",
    "severity",
    "lesion_pixels",
    "split_hint",
)


def shortcut_test_size(cfg: SynthConfig) -> int:
    return cfg.n // 10 if cfg.shortcut_test < 0 else cfg.shortcut_test


def _balanced(n: int) -> list[int]:
    return [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]


def plan_dataset(cfg: SynthConfig) -> list[CaseSpec]:
    """Every film of the dataset, main set first, then the ``shortcut_test`` split."""
    return _plan_split(cfg, "", cfg.n) + _plan_split(cfg, SHORTCUT_TEST, shortcut_test_size(cfg))


def _plan_split(cfg: SynthConfig, split: str, n: int) -> list[CaseSpec]:
    code = SPLIT_CODES[split]
    rng = np.random.default_rng([cfg.seed, code, 0])
    entries: list[tuple[str, int]] = []  # (label, patient index)
    patients = 0
    for label, count in zip(CLASSES, _balanced(n), strict=True):
        left = count
        while left > 0:
            k = 2 if split == "" and left >= 2 and rng.random() < PAIR_RATE else 1
            entries += [(label, patients)] * k
            patients += 1
            left -= k
    style_of = rng.integers(cfg.styles, size=max(1, patients))
    prefix, pprefix = ("syn-st-", "st") if split else ("syn-", "p")
    specs = []
    for idx, j in enumerate(rng.permutation(len(entries))):
        label, p = entries[int(j)]
        view = "AP" if rng.random() < AP_RATE else "PA"
        kind = KINDS[int(rng.integers(len(KINDS)))]
        if split == SHORTCUT_TEST:
            others = [c for c in CLASSES if c != label]
            target = others[int(rng.integers(len(others)))]
            position = CLASS_POSITIONS[target]
        elif rng.random() < cfg.shortcut_rate:
            target, position = label, CLASS_POSITIONS[label]
        else:
            target, position = "", POSITIONS[int(rng.integers(len(POSITIONS)))]
        specs.append(
            CaseSpec(
                image_id=f"{prefix}{idx:06d}",
                split_hint=split,
                label=label,
                patient_id=f"{pprefix}{p:05d}",
                view=view,
                style=int(style_of[p]),
                marker_kind=kind,
                marker_position=position,
                marker_target_class=target,
                seed=cfg.seed,
                split_code=code,
                patient_index=p,
                image_index=idx,
            )
        )
    return specs


def metadata_row(case: Case) -> dict:
    s, m = case.spec, case.marker
    return {
        "image_id": s.image_id,
        "image": f"images/{s.image_id}.png",
        "mask": f"masks/{s.image_id}.png",
        "lesion": f"lesions/{s.image_id}.png",
        "annotation": f"annotations/{s.image_id}.json",
        "label": s.label,
        "patient_id": s.patient_id,
        "view": s.view,
        "style": s.style,
        "marker_kind": s.marker_kind,
        "marker_position": s.marker_position,
        "marker_class_specific": bool(s.marker_target_class == s.label),
        "marker_target_class": s.marker_target_class,
        "marker_x0": m.box[0],
        "marker_y0": m.box[1],
        "marker_x1": m.box[2],
        "marker_y1": m.box[3],
        "severity": round(case.severity, 4),
        "lesion_pixels": int(case.lesion.sum()),
        "split_hint": s.split_hint,
    }


def darwin_json(case: Case, row: dict) -> dict:
    """V7 Darwin annotation of one film: lung polygons (as rasterised), tags, our metadata."""
    s = case.spec
    size = case.image.shape[0]
    name = f"{s.image_id}.png"
    anns: list[dict] = [
        {"name": lung, "polygon": {"path": [{"x": float(x), "y": float(y)} for x, y in pts]}}
        for lung, pts in case.polygons.items()
    ]
    tags = [s.label, f"View/{s.view}", f"PatientID:{s.patient_id}", f"Style:{s.style}"]
    anns += [{"name": t, "tag": {}} for t in tags]
    image = {"width": size, "height": size, "filename": name, "original_filename": name}
    image.update({"seq": s.image_index, "url": None, "thumbnail_url": None, "path": "/"})
    return {
        "dataset": "cxrguide synthetic",
        "image": image,
        "annotated": True,
        "annotations": anns,
        "cxrguide": row,
    }


def _paths(out: Path, image_id: str) -> dict[str, Path]:
    return {
        "image": out / "images" / f"{image_id}.png",
        "mask": out / "masks" / f"{image_id}.png",
        "lesion": out / "lesions" / f"{image_id}.png",
        "annotation": out / "annotations" / f"{image_id}.json",
    }


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(arr: np.ndarray) -> bytes:
    """8-bit grayscale PNG with the Sub filter on every row and zlib level 1.

    Pillow tries every filter on every row, which costs as much as drawing the film; one fixed
    filter gives the same file size on these images in half the time."""
    h, w = arr.shape
    rows = np.empty((h, w + 1), np.uint8)
    rows[:, 0] = 1  # filter type Sub: each byte minus its left neighbour
    rows[:, 1] = arr[:, 0]
    np.subtract(arr[:, 1:], arr[:, :-1], out=rows[:, 2:], dtype=np.uint8, casting="unsafe")
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)),
            _chunk(b"IEND", b""),
        )
    )


def _save_png(arr: np.ndarray, path: Path) -> None:
    # no temp file + rename needed: the JSON is written last and marks a film complete, so a
    # half-written PNG from an interrupted run is simply drawn again
    path.write_bytes(png_bytes(np.ascontiguousarray(arr, dtype=np.uint8)))


def _existing_row(out: Path, spec: CaseSpec) -> dict | None:
    """Metadata of a film already on disk (the annotation JSON is written last)."""
    paths = _paths(out, spec.image_id)
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        row = json.loads(paths["annotation"].read_text(encoding="utf-8"))["cxrguide"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return row if isinstance(row, dict) and row.get("image_id") == spec.image_id else None


def _draw_and_write(job: tuple[CaseSpec, int, str]) -> dict:
    spec, size, out_str = job
    out = Path(out_str)
    case = render_case(spec, size)
    row = metadata_row(case)
    paths = _paths(out, spec.image_id)
    _save_png(case.image, paths["image"])
    _save_png(case.lung_mask, paths["mask"])
    _save_png(case.lesion.astype(np.uint8) * 255, paths["lesion"])
    # a JSON cut short by an interrupt does not parse, so the film is redrawn on resume
    paths["annotation"].write_text(json.dumps(darwin_json(case, row)), encoding="utf-8")
    return row


def content_config(cfg: SynthConfig) -> dict:
    """The settings that decide the files' content (workers/preview/out do not)."""
    d = {k: getattr(cfg, k) for k in CONTENT_FIELDS}
    d["shortcut_test"] = shortcut_test_size(cfg)
    return {"generator_version": GENERATOR_VERSION, **d}


def _claim_folder(out: Path, cfg: SynthConfig) -> None:
    """Create ``out`` or accept it when it holds this config's output; never clobber others."""
    marker = out / "synth_config.yaml"
    want = content_config(cfg)
    if out.exists() and not out.is_dir():
        raise CxrGuideError(f"{out}: exists and is not a folder")
    if marker.is_file():
        try:
            have = (yaml.safe_load(marker.read_text(encoding="utf-8")) or {}).get("content", {})
        except (yaml.YAMLError, AttributeError):
            raise CxrGuideError(
                f"{marker}: unreadable; delete the folder or use another --out"
            ) from None
        diff = [f"{k}: {have.get(k)!r} -> {v!r}" for k, v in want.items() if have.get(k) != v]
        if diff:
            raise CxrGuideError(
                f"{out}: holds synthetic data made with another config ({'; '.join(diff)}); "
                "use another --out or delete it"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise CxrGuideError(f"{out}: folder is not empty and was not written by `cxrguide synth`")
    for sub in ("images", "masks", "lesions", "annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    settings = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
    text = yaml.safe_dump({"content": want, "settings": settings}, sort_keys=False)
    atomic_write_text(marker, text)  # a kill mid-write must not leave an unreadable marker


@dataclass(frozen=True)
class SynthResult:
    out: Path
    counts: dict[str, dict[str, int]]  # split ("main"/"shortcut_test") -> label -> images
    written: int
    skipped: int

    def summary(self) -> str:
        parts = []
        for split, per in self.counts.items():
            inner = ", ".join(f"{label} {per.get(label, 0)}" for label in CLASSES)
            parts.append(f"{split}: {inner}")
        return (
            f"{self.written + self.skipped} images in {self.out} ({'; '.join(parts)}); "
            f"drew {self.written}, kept {self.skipped} already there"
        )


def resolve_workers(workers: int) -> int:
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def generate_dataset(cfg: SynthConfig, progress: bool = True) -> SynthResult:
    """Write (or complete) the dataset described by ``cfg`` under ``cfg.out``."""
    if cfg.out is None:
        raise CxrGuideError("out: an output folder is required")
    out = Path(cfg.out)
    _claim_folder(out, cfg)
    specs = plan_dataset(cfg)
    rows: dict[str, dict] = {}
    todo = []
    for spec in specs:
        row = _existing_row(out, spec)
        if row is None:
            todo.append(spec)
        else:
            rows[spec.image_id] = row
    skipped = len(rows)
    jobs = [(spec, cfg.size, str(out)) for spec in todo]
    workers = min(resolve_workers(cfg.workers), max(1, len(jobs)))
    bar = tqdm(total=len(specs), initial=skipped, desc="synth", unit="img", disable=not progress)
    try:
        if workers == 1:
            for job in jobs:
                row = _draw_and_write(job)
                rows[row["image_id"]] = row
                bar.update()
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                for row in pool.imap_unordered(_draw_and_write, jobs, chunksize=4):
                    rows[row["image_id"]] = row
                    bar.update()
    finally:
        bar.close()
    ordered = [rows[s.image_id] for s in specs]
    _write_metadata(out / "metadata.csv", ordered)
    counts: dict[str, dict[str, int]] = {}
    for row in ordered:
        split = row["split_hint"] or "main"
        counts.setdefault(split, Counter())[row["label"]] += 1
    return SynthResult(out, {k: dict(v) for k, v in counts.items()}, len(todo), skipped)


def _write_metadata(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in COLUMNS})
