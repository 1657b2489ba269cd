"""Data configs: reading files, synthetic phantoms, `cxrguide prepare`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from cxrguide.config.core import _f
from cxrguide.errors import ConfigError


@dataclasses.dataclass
class ReaderConfig:
    """How every CXR file is read (``inspect`` and ``prepare`` share it)."""

    max_pixels: int = _f(64_000_000, "refuse images with more pixels (decompression-bomb guard)")
    min_side: int = _f(64, "refuse images whose shorter side is below this (not a CXR)")
    allow_modality: list[str] = _f(
        [],
        "DICOM modalities to read besides radiographs CR/DX/DR (e.g. CT; 'all': any)",
        metavar="MODALITY",
    )

    def validate(self) -> None:
        if self.max_pixels <= 0:
            raise ConfigError("max_pixels: must be positive")
        if self.min_side < 1:
            raise ConfigError("min_side: must be >= 1")


@dataclasses.dataclass
class SynthConfig:
    """`cxrguide synth`: procedurally drawn chest X-ray phantoms."""

    out: Path | None = _f(None, "output folder", metavar="DIR")
    n: int = _f(900, "number of images in the main set (balanced over the 3 classes)")
    size: int = _f(256, "image side in pixels")
    seed: int = _f(0, "random seed (same seed, same images)")
    shortcut_rate: float = _f(0.0, "probability that a marker sits at its class-specific position")
    styles: int = _f(3, "number of acquisition styles (act as sources/sites)")
    shortcut_test: int = _f(-1, "size of the shortcut_test split (-1: n // 10)")
    workers: int = _f(0, "processes (0: all cores)")
    preview: Path | None = _f(None, "also draw a contact sheet PNG here", metavar="FILE.png")

    def validate(self) -> None:
        if self.n < 3:
            raise ConfigError("n: need at least 3 images (one per class)")
        if not 32 <= self.size <= 2048:
            raise ConfigError("size: must be between 32 and 2048")
        if not 0.0 <= self.shortcut_rate <= 1.0:
            raise ConfigError("shortcut_rate: must be in [0, 1]")
        if self.styles < 1:
            raise ConfigError("styles: must be >= 1")


@dataclasses.dataclass
class PrepareConfig:
    """`cxrguide prepare`: merge sources into one de-duplicated, leakage-free manifest."""

    source: list[str] = _f([], "KIND=PATH, repeatable", metavar="KIND=PATH")
    out: Path | None = _f(None, "output folder", metavar="DIR")
    size: int = _f(512, "side of the square decoded-image cache")
    seed: int = _f(0, "seed for the split and the quota sampling")
    quota: Literal["paper", "none"] = _f("none", "cap source x class at the study's Table 3 totals")
    near_duplicate_distance: int = _f(
        12, "max Hamming distance of 256-bit dHashes for near-duplicates"
    )
    workers: int = _f(0, "decoding processes (0: all cores)")
    max_pixels: int = _f(64_000_000, "refuse images with more pixels (decompression-bomb guard)")
    min_side: int = _f(64, "refuse images whose shorter side is below this")
    allow_modality: list[str] = _f(
        [],
        "DICOM modalities to read besides radiographs CR/DX/DR (e.g. CT; 'all': any)",
        metavar="MODALITY",
    )
    radiography_classes: list[str] = _f(
        ["COVID"], "COVID-19 Radiography Database folders to take (the study: COVID only)"
    )

    def validate(self) -> None:
        if not 32 <= self.size <= 2048:
            raise ConfigError("size: must be between 32 and 2048")
        for spec in self.source:
            if "=" not in spec:
                raise ConfigError(f"source: {spec!r} is not KIND=PATH")

    @property
    def reader(self) -> ReaderConfig:
        return ReaderConfig(max_pixels=self.max_pixels, min_side=self.min_side,
                            allow_modality=list(self.allow_modality))  # fmt: skip
