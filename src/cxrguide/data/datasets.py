"""Torch datasets over a prepared folder: manifest rows + the uint8 image cache (+ lung masks).

Images stay single-channel in [0, 1]; models repeat them to 3 channels with their own
normalisation. Resizing from the cache side to the backbone's input happens here (the one rule
of :mod:`cxrguide.data.transforms`), so one prepared folder serves every backbone size.
Augmentation (:class:`~cxrguide.data.augment.CxrAugment`) is applied per item, image and lung
mask together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrguide.config import load_yaml
from cxrguide.data import cache
from cxrguide.data.augment import CxrAugment
from cxrguide.data.completion import require_complete
from cxrguide.data.transforms import resize_image, resize_mask
from cxrguide.errors import CxrGuideError
from cxrguide.labels import CLASS_INDEX

LUNG_CACHE = "cache/lungs_{size}.npy"


@dataclass
class Prepared:
    """A folder written by ``cxrguide prepare``."""

    root: Path
    manifest: pd.DataFrame
    size: int

    @classmethod
    def open(cls, root: str | Path) -> Prepared:
        root = require_complete(root, "prepare")  # an interrupted prepare is never read as data
        path = root / "manifest.csv"
        if not path.exists():
            raise CxrGuideError(f"{path}: not found (run 'cxrguide prepare' first)")
        manifest = pd.read_csv(path, dtype={"patient_id": str, "view": str}, keep_default_na=False)
        size = int(load_yaml(root / "prepare_config.yaml")["size"])
        images = cache.image_cache_path(root, size)
        if not images.exists():
            raise CxrGuideError(f"{images}: image cache missing (rerun 'cxrguide prepare')")
        if len(cache.open_readonly(images)) != len(manifest):
            raise CxrGuideError(f"{images}: row count differs from manifest.csv; rerun prepare")
        return cls(root, manifest, size)

    @property
    def images(self) -> np.ndarray:
        return cache.open_readonly(cache.image_cache_path(self.root, self.size))

    @property
    def lung_cache_path(self) -> Path:
        return self.root / LUNG_CACHE.format(size=self.size)

    def lungs(self) -> np.ndarray:
        path = self.lung_cache_path
        if not path.exists():
            raise CxrGuideError(
                f"{path}: no lung masks for this prepared set (run 'cxrguide lungs predict RUN "
                f"--data {self.root}')"
            )
        return cache.open_readonly(path)

    def rows(self, split: str) -> np.ndarray:
        rows = np.flatnonzero(self.manifest["split"].to_numpy() == split)
        if len(rows) == 0:
            raise CxrGuideError(f"{self.root}/manifest.csv: split {split!r} has no images")
        return rows


class CxrDataset(Dataset):
    """Items: dict(image (1,S,S) float [0,1], label, index (manifest row)[, lung (1,S,S)])."""

    def __init__(
        self,
        prepared: Prepared,
        split: str | None = None,
        *,
        rows: np.ndarray | None = None,
        image_size: int | None = None,
        augment: CxrAugment | None = None,
        with_lungs: bool = False,
    ) -> None:
        self.prepared = prepared
        self.rows = rows if rows is not None else prepared.rows(split or "train")
        self.image_size = image_size or prepared.size
        self.augment = augment
        self.labels = prepared.manifest["label"].map(CLASS_INDEX).to_numpy()
        self._images = prepared.images
        self._lungs = prepared.lungs() if with_lungs else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        image = torch.from_numpy(np.array(self._images[row], dtype=np.float32) / 255.0)[None]
        image = resize_image(image, self.image_size)
        lung = None
        if self._lungs is not None:
            lung = torch.from_numpy(np.array(self._lungs[row], dtype=np.float32) / 255.0)[None]
            lung = resize_mask(lung, self.image_size)
        if self.augment is not None:
            image, lung = self.augment(image, lung)
        item = {"image": image, "label": torch.tensor(self.labels[row]), "index": torch.tensor(row)}
        if lung is not None:
            item["lung"] = lung
        return item
