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
        "DICOM modalities to read besides radiographs CR/DX/DR/RG (e.g. CT; 'all': any)",
        metavar="MODALITY",
    )
    allow_for_processing: bool = _f(
        False, "read DICOMs marked FOR PROCESSING (raw detector data), with a warning"
    )
    decode_timeout_s: float = _f(60.0, "refuse a file whose decoding takes longer (seconds)")

    def validate(self) -> None:
        if self.max_pixels <= 0:
            raise ConfigError("max_pixels: must be positive")
        if self.min_side < 1:
            raise ConfigError("min_side: must be >= 1")
        if self.decode_timeout_s <= 0:
            raise ConfigError("decode_timeout_s: must be positive")

    @property
    def limits(self) -> dict:
        """The reader's keyword arguments (:func:`cxrguide.data.imaging.read_image`)."""
        return {"max_pixels": self.max_pixels, "min_side": self.min_side,
                "allow_modality": tuple(self.allow_modality),
                "allow_for_processing": self.allow_for_processing,
                "deadline_s": self.decode_timeout_s}  # fmt: skip


@dataclasses.dataclass
class InspectConfig(ReaderConfig):
    """`cxrguide inspect FILE...`: the reader's verdict per file; optionally the model's input."""

    model_input: int = _f(0, "also build the SIZE x SIZE square a model of that input side sees",
                          metavar="SIZE")  # fmt: skip
    save: Path | None = _f(None, "write that square as an 8-bit PNG (one FILE)", metavar="OUT.png")

    def validate(self) -> None:
        super().validate()
        if self.model_input < 0 or (self.save is not None and not self.model_input):
            raise ConfigError("model_input: give --model-input SIZE (> 0) with --save")


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
        "DICOM modalities to read besides radiographs CR/DX/DR/RG (e.g. CT; 'all': any)",
        metavar="MODALITY",
    )
    allow_for_processing: bool = _f(
        False, "read DICOMs marked FOR PROCESSING (raw detector data), with a warning"
    )
    decode_timeout_s: float = _f(60.0, "refuse a file whose decoding takes longer (seconds)")
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
                            allow_modality=list(self.allow_modality),
                            allow_for_processing=self.allow_for_processing,
                            decode_timeout_s=self.decode_timeout_s)  # fmt: skip
