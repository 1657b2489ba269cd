"""Tiny bring-your-own-data sources for tests: gray PNG films, ImageFolder trees, CSV tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def film(path: Path, seed: int = 0, side: int = 72) -> Path:
    """A small gray PNG (distinct per seed, so prepare keeps each one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(path)
    return path


def image_folder(root: Path, layout: dict[str, int], seed: int = 0) -> Path:
    """``root/<label>/<label>-<k>.png`` for every label: count."""
    for j, (label, n) in enumerate(layout.items()):
        for k in range(n):
            film(root / label / f"{label.lower()}-{k}.png", seed=seed * 1000 + j * 100 + k)
    return root


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path
