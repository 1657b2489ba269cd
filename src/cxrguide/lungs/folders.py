"""Plain image + lung-mask folder pairs: ``synth`` output, Montgomery, Shenzhen, your own data.

Layouts recognised under ``--source masks=ROOT``:

* ``metadata.csv`` with ``image`` and ``mask`` columns (paths relative to ROOT) and optionally
  ``patient_id``: the layout ``cxrguide synth`` writes. Used whenever it is present.
* ``images/`` (or ``CXR_png/``, ``img/``) beside ``masks/`` (or ``mask/``): the mask of
  ``X.png`` is ``masks/X.png`` or ``masks/X_mask.png`` (Shenzhen's naming).
* Montgomery: ``CXR_png/`` beside ``ManualMask/leftMask/`` and ``ManualMask/rightMask/``; the two
  halves are merged and keep their side.

A mask pixel is lung when its value is >= 64 (binary 0/255 and 0/1 masks, ``synth``'s 128/255,
light compression noise). Mask files are matched to images by file stem, case-insensitively.
Patient id: ``metadata.csv``'s ``patient_id`` column, else the image stem (both public sets
have one film per patient).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from cxrguide.data.sources.base import Rejection
from cxrguide.errors import ImageReadError, SourceLayoutError
from cxrguide.lungs.records import LEFT, LUNG, RIGHT, LungMask, LungRecord

KIND = "masks"
IMAGE_DIRS = ("images", "CXR_png", "img", "imgs")
MASK_DIRS = ("masks", "mask")
SIDED_DIRS = (("ManualMask/rightMask", RIGHT), ("ManualMask/leftMask", LEFT))
SUFFIXES = ("", "_mask")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
LUNG_THRESHOLD = 64


def _files(folder: Path) -> dict[str, Path]:
    """stem (lower case) -> file, for image-like files directly in ``folder``."""
    return {
        p.stem.lower(): p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    }


def _side_of(rel: str) -> int:
    low = rel.lower()
    return RIGHT if "rightmask" in low else LEFT if "leftmask" in low else LUNG


def read_mask_file(path: Path, height: int, width: int) -> np.ndarray:
    """A mask image -> bool lung at ``height`` x ``width`` (same-aspect masks are rescaled)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "1") else im)
    except (OSError, ValueError) as err:
        raise ImageReadError(path, f"cannot read mask ({err})") from None
    lung = arr >= LUNG_THRESHOLD if arr.dtype != np.bool_ else arr
    if arr.dtype == np.uint8 and arr.max(initial=0) == 1:
        lung = arr > 0  # 0/1 masks
    h, w = lung.shape
    if (h, w) == (height, width):
        return lung
    if abs(h / w - height / width) > 0.01:
        raise ImageReadError(path, f"mask is {w}x{h} but the image is {width}x{height}")
    # same aspect: a uniformly resized copy; nearest-neighbour back to the image size
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.intp), w - 1)
    return lung[rows][:, cols]


def load_folder_mask(record: LungRecord, height: int, width: int) -> LungMask:
    labels = np.zeros((height, width), dtype=np.uint8)
    for rel in record.annotation:
        labels[read_mask_file(record.root / rel, height, width)] = _side_of(rel)
    return LungMask(labels, np.zeros((height, width), dtype=bool))


class MaskFolderSource:
    """``--source masks=ROOT``: images and binary lung masks, paired by file name."""

    kind = KIND
    expected_layout = (
        "metadata.csv with image,mask columns, or images/ + masks/, "
        "or CXR_png/ + ManualMask/{left,right}Mask/"
    )

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceLayoutError(f"{self.root}: masks folder not found")
        self.metadata = self._metadata_rows()
        self.image_dir = next((self.root / d for d in IMAGE_DIRS if (self.root / d).is_dir()), None)
        self.mask_dirs = [(self.root / d, LUNG) for d in MASK_DIRS if (self.root / d).is_dir()][
            :1
        ] or [(self.root / d, s) for d, s in SIDED_DIRS if (self.root / d).is_dir()]
        if self.metadata is None and (self.image_dir is None or not self.mask_dirs):
            raise SourceLayoutError(
                f"{self.root}: does not look like an image + mask folder "
                f"(expected {self.expected_layout})"
            )

    def _metadata_rows(self) -> list[dict[str, str]] | None:
        path = self.root / "metadata.csv"
        if not path.is_file():
            return None
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"image", "mask"} <= set(reader.fieldnames):
                return None
            return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]

    def _record(self, image: Path, masks: list[Path], pid: str) -> LungRecord:
        return LungRecord(
            source=KIND,
            root=self.root,
            path=image.relative_to(self.root).as_posix(),
            patient_id=f"{KIND}:{pid}",
            annotation=tuple(m.relative_to(self.root).as_posix() for m in masks),
        )

    def scan(self) -> Iterator[LungRecord | Rejection]:
        if self.metadata is not None:
            yield from self._scan_metadata(self.metadata)
            return
        assert self.image_dir is not None
        mask_files = [(_files(folder), folder) for folder, _ in self.mask_dirs]
        matched: set[Path] = set()
        for stem, image in _files(self.image_dir).items():
            masks = []
            for files, _ in mask_files:
                found = next((files[stem + s] for s in SUFFIXES if stem + s in files), None)
                if found is not None:
                    masks.append(found)
            rel = image.relative_to(self.root).as_posix()
            if len(masks) < len(mask_files) or not masks:
                wanted = " and ".join(f.relative_to(self.root).as_posix() for _, f in mask_files)
                yield Rejection(KIND, rel, f"no mask file for this image in {wanted}")
                continue
            matched.update(masks)
            yield self._record(image, masks, image.stem)
        for files, _ in mask_files:
            for mask in files.values():
                if mask not in matched:
                    rel = mask.relative_to(self.root).as_posix()
                    yield Rejection(KIND, rel, "mask file without a matching image")

    def _scan_metadata(self, rows: list[dict[str, str]]) -> Iterator[LungRecord | Rejection]:
        for row in rows:
            image, mask = self.root / row["image"], self.root / row["mask"]
            if not row["image"] or not image.is_file():
                yield Rejection(KIND, row["image"], "image file not found (metadata.csv)")
            elif not row["mask"] or not mask.is_file():
                yield Rejection(KIND, row["image"], f"mask file not found: {row['mask']!r}")
            else:
                pid = row.get("patient_id") or image.stem
                yield self._record(image, [mask], pid)
