"""What the lung readers share: the record, the mask type, mask loading and cache paths.

Records carry only paths (no pixels, no polygons), so scanning 6,500 annotations is cheap and a
record pickles into a decoding worker in a few bytes; :func:`load_mask` re-reads the annotation
there and rasterises it at the image's own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Label values of LungMask.labels. Radiographs are viewed as if facing the patient: the patient's
# right lung is on the image's left.
RIGHT, LEFT, LUNG = 1, 2, 3  # LUNG: a lung whose side the annotation does not name
LUNG_CACHE = "cache/lungs_{size}.npy"


def lung_cache_path(prepared: str | Path, size: int) -> Path:
    """``DIR/cache/lungs_<size>.npy``: uint8 0/255 masks, row i = manifest row i."""
    return Path(prepared) / LUNG_CACHE.format(size=size)


@dataclass(frozen=True)
class LungRecord:
    """One image with a lung annotation (pixels and outline not read yet)."""

    source: str  # reader kind: "v7" or "masks"
    root: Path  # the folder given as --source KIND=PATH
    path: str  # image, POSIX path relative to root
    patient_id: str  # source-prefixed
    annotation: tuple[str, ...]  # V7: ("file.json",) or ("a.zip::member.json",); masks: files
    size: tuple[int, int] | None = None  # (width, height) the annotation states, if any

    @property
    def file(self) -> Path:
        return self.root / self.path

    @property
    def image_id(self) -> str:
        return f"{self.source}:{self.path}"


@dataclass
class LungMask:
    """A rasterised lung annotation at the image's own size."""

    labels: np.ndarray  # uint8 HxW: 0 background, RIGHT, LEFT or LUNG
    ignore: np.ndarray  # bool HxW: devices / markup drawn over the lungs (V7 "Ignore")

    @property
    def lung(self) -> np.ndarray:
        return self.labels > 0

    @property
    def sided(self) -> bool:
        """Whether left and right lung are told apart (every lung pixel has a side)."""
        return bool(self.lung.any()) and not bool((self.labels == LUNG).any())
