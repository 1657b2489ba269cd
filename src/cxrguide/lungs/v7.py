"""V7 Labs / Darwin JSON lung annotations (the study's V7 COVID-19 X-ray set) -> lung masks.

Layout: ``ROOT/images/<image.filename>`` and Darwin JSON files under ``ROOT/annotations/``,
either loose (``*.json``, as ``darwin dataset pull`` and ``cxrguide synth`` write them) or inside
zips (``annotations/covid-only.zip`` as the V7 repository publishes them). Darwin 1.0
(``image`` + ``polygon.path`` / ``complex_polygon.path``) and 2.0 (``item.slots`` +
``polygon.paths``) are read.

Classes: any annotation whose name contains "lung" is lung; "Right"/"Left" in the name keeps the
side (the published set says only "Lung"; ``synth`` writes "Right Lung"/"Left Lung"). "Ignore"
(pacemakers, markup over a lung) is returned separately; the published semantic masks are the
lung polygons with Ignore painted over them (Dice >= 0.998 against our rasterisation on the
sample). Multi-part and holed outlines are filled with the even-odd rule, each path rasterised
by Pillow with its outline. Annotations without a lung polygon (lateral films, CT slices) are
rejected with their tags, never guessed.

Patient id: the ``PatientID:<id>`` tag, else ``metadata.csv`` at the root (``patient_id`` by
image stem, the layout ``synth`` writes), else the stem of ``image.original_filename``.
"""

from __future__ import annotations

import csv
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cxrguide.data.sources.base import Rejection
from cxrguide.errors import SourceLayoutError
from cxrguide.lungs.records import LEFT, LUNG, RIGHT, LungMask, LungRecord

KIND = "v7"
ZIP_SEP = "::"
_PATIENT_TAG = re.compile(r"^\s*patient\s*_?id\s*[:/=]\s*(.+?)\s*$", re.IGNORECASE)

Path2D = np.ndarray  # (K, 2) float x, y in pixels of the annotated image


@dataclass
class DarwinImage:
    """The parts of one Darwin JSON this project uses."""

    filename: str
    original_filename: str
    width: int
    height: int
    lungs: list[tuple[int, list[Path2D]]] = field(default_factory=list)  # (side, paths)
    ignore: list[list[Path2D]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    @property
    def patient_tag(self) -> str:
        for tag in self.tags:
            m = _PATIENT_TAG.match(tag)
            if m:
                return m.group(1)
        return ""


class NotDarwinError(ValueError):
    """A JSON file that is not a Darwin image annotation (a COCO export, say)."""


def _points(path: Any) -> Path2D:
    return np.array([[float(p["x"]), float(p["y"])] for p in path], dtype=np.float64)


def _paths(ann: dict) -> list[Path2D]:
    """Every closed path of a polygon / complex polygon, Darwin 1.0 or 2.0."""
    for key in ("polygon", "complex_polygon"):
        shape = ann.get(key)
        if not isinstance(shape, dict):
            continue
        raw = shape.get("paths") or shape.get("path") or []
        parts = raw if raw and isinstance(raw[0], list) else [raw]
        return [p for p in (_points(part) for part in parts) if len(p) >= 3]
    return []


def _side(name: str) -> int:
    low = name.lower()
    if "right" in low:
        return RIGHT
    if "left" in low:
        return LEFT
    return LUNG


def parse_darwin(data: Any) -> DarwinImage:
    """Darwin JSON (already loaded) -> :class:`DarwinImage`; NotDarwinError if it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise NotDarwinError("no 'annotations' list")
    if isinstance(data.get("image"), dict):
        img = data["image"]
        filename = str(img.get("filename") or img.get("original_filename") or "")
        original = str(img.get("original_filename") or filename)
        width, height = img.get("width"), img.get("height")
    elif isinstance(data.get("item"), dict) and data["item"].get("slots"):
        slot = data["item"]["slots"][0]
        files = slot.get("source_files") or [{}]
        filename = str(files[0].get("file_name") or data["item"].get("name") or "")
        original, (width, height) = filename, (slot.get("width"), slot.get("height"))
    else:
        kind = "COCO export" if "images" in data and "categories" in data else "unknown JSON"
        raise NotDarwinError(f"{kind}, not a Darwin image annotation")
    if not filename or not isinstance(width, int | float) or not isinstance(height, int | float):
        raise NotDarwinError("image filename/width/height missing")
    out = DarwinImage(filename, original, int(width), int(height))
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            continue
        name = str(ann.get("name", ""))
        if "tag" in ann:
            out.tags.append(name)
            continue
        paths = _paths(ann)
        if not paths:
            continue
        if "lung" in name.lower():
            out.lungs.append((_side(name), paths))
        elif name.lower() == "ignore":
            out.ignore.append(paths)
    return out


def rasterize(paths: list[Path2D], height: int, width: int) -> np.ndarray:
    """Even-odd fill of closed paths (holes, multi-part outlines), bool ``height`` x ``width``."""
    out = np.zeros((height, width), dtype=bool)
    for path in paths:
        canvas = Image.new("1", (width, height), 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in path], fill=1, outline=1)
        out ^= np.asarray(canvas, dtype=bool)
    return out


def darwin_mask(ann: DarwinImage, height: int | None = None, width: int | None = None) -> LungMask:
    """Rasterise at ``height`` x ``width`` (default: the annotated size; else scaled to fit)."""
    h, w = height or ann.height, width or ann.width
    scale = np.array([w / ann.width, h / ann.height])

    def fit(paths: list[Path2D]) -> list[Path2D]:  # pixel centres map onto pixel centres
        return (
            paths if (h, w) == (ann.height, ann.width) else [(p + 0.5) * scale - 0.5 for p in paths]
        )

    labels = np.zeros((h, w), dtype=np.uint8)
    for side, paths in ann.lungs:
        labels[rasterize(fit(paths), h, w)] = side
    ignore = np.zeros((h, w), dtype=bool)
    for paths in ann.ignore:
        ignore |= rasterize(fit(paths), h, w)
    return LungMask(labels, ignore)


def read_annotation(root: Path, ref: str) -> DarwinImage:
    """Load ``ref`` (``file.json`` or ``archive.zip::member.json``, relative to ``root``)."""
    try:
        if ZIP_SEP in ref:
            archive, member = ref.split(ZIP_SEP, 1)
            with zipfile.ZipFile(root / archive) as zf:
                raw = zf.read(member)
        else:
            raw = (root / ref).read_bytes()
        data = json.loads(raw)
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise SourceLayoutError(f"{root / ref}: cannot read ({err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NotDarwinError(f"not valid JSON ({err})") from None
    return parse_darwin(data)


def load_v7_mask(record: LungRecord, height: int, width: int) -> LungMask:
    return darwin_mask(read_annotation(record.root, record.annotation[0]), height, width)


def _annotation_refs(folder: Path, root: Path) -> Iterator[str]:
    """Every JSON under ``folder``, loose or zipped, as a reference relative to ``root``."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() == ".json" and path.is_file():
            yield rel
        elif path.suffix.lower() == ".zip" and path.is_file():
            try:
                with zipfile.ZipFile(path) as zf:
                    names = sorted(n for n in zf.namelist() if n.lower().endswith(".json"))
            except zipfile.BadZipFile:
                yield rel  # reported as unreadable by the scan
                continue
            yield from (f"{rel}{ZIP_SEP}{n}" for n in names)


def _metadata_patients(root: Path) -> dict[str, str]:
    """image stem -> patient_id from ``ROOT/metadata.csv`` when it has those columns."""
    path = root / "metadata.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "patient_id" not in reader.fieldnames:
            return {}
        out = {}
        for row in reader:
            pid = (row.get("patient_id") or "").strip()
            for key in ("image_id", "image", "filename"):
                if row.get(key):
                    out[Path(row[key]).stem] = pid
        return out


class V7Source:
    """``--source v7=ROOT``: Darwin JSON under ``ROOT/annotations``, images in ``ROOT/images``."""

    kind = KIND
    expected_layout = "annotations/ (Darwin *.json or zips of them) and images/"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceLayoutError(f"{self.root}: v7 folder not found")
        if not (self.root / "annotations").is_dir() or not (self.root / "images").is_dir():
            raise SourceLayoutError(
                f"{self.root}: does not look like v7 (expected {self.expected_layout})"
            )

    def scan(self) -> Iterator[LungRecord | Rejection]:
        images = {p.name.lower(): p for p in (self.root / "images").rglob("*") if p.is_file()}
        patients = _metadata_patients(self.root)
        refs = list(_annotation_refs(self.root / "annotations", self.root))
        if not refs:
            raise SourceLayoutError(f"{self.root / 'annotations'}: no Darwin JSON files found")
        for ref in refs:
            try:
                ann = read_annotation(self.root, ref)
            except (NotDarwinError, SourceLayoutError) as err:
                yield Rejection(KIND, ref, f"annotation skipped: {err}")
                continue
            image = images.get(ann.filename.lower()) or images.get(ann.original_filename.lower())
            if not ann.lungs:
                tags = ", ".join(t for t in ann.tags if not _PATIENT_TAG.match(t))
                yield Rejection(KIND, ref, f"no lung polygon ({ann.filename}; tags: {tags})")
                continue
            if image is None:
                yield Rejection(KIND, ref, f"image file not found: images/{ann.filename}")
                continue
            stem = Path(ann.filename).stem
            pid = ann.patient_tag or patients.get(stem) or Path(ann.original_filename).stem
            yield LungRecord(
                source=KIND,
                root=self.root,
                path=image.relative_to(self.root).as_posix(),
                patient_id=f"{KIND}:{pid}",
                annotation=(ref,),
                size=(ann.width, ann.height),
            )
