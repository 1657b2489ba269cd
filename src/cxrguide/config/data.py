"""Data configs: reading files, synthetic phantoms, `cxrguide prepare`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from cxrguide.config.core import _f, load_yaml
from cxrguide.errors import ConfigError
from cxrguide.labels import CLASSES

#: A source's NAME (the manifest's ``source`` column): letters, digits, ``.``, ``_``, ``-``.
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One ``--source KIND[:NAME]=PATH``: parsed here once, opened by the source registry."""

    kind: str  # lower case: ieee8023, ..., folder, table
    name: str  # "" when not given (the source derives one)
    path: str
    text: str  # as the user wrote it, for messages


def parse_source_spec(text: str) -> SourceSpec:
    """``KIND=PATH`` or ``KIND:NAME=PATH`` -> SourceSpec; a malformed one names itself."""
    left, eq, path = str(text).partition("=")
    kind, _, name = left.partition(":")
    kind, name, path = kind.strip().lower(), name.strip(), path.strip()
    if not eq or not kind or not path:
        raise ConfigError(f"source: {text!r} is not KIND=PATH or KIND:NAME=PATH")
    if ":" in left and not SOURCE_NAME.fullmatch(name):
        raise ConfigError(
            f"source: name {name!r} in {text!r} must be letters, digits, '.', '_' or '-'"
        )
    return SourceSpec(kind, name, path, str(text))


def read_label_map(value: Any, where: str = "label_map") -> dict[str, str | None]:
    """The user's label map (a YAML file or an inline mapping) as ``{source label: class or
    None}``; checked here so a typo names its file and key before anything is scanned."""
    if value is None:
        return {}
    if isinstance(value, str | Path):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: {path} not found")
        value, where = load_yaml(path), str(path)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of source label -> class")
    out: dict[str, str | None] = {}
    for raw, label in value.items():
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(f"{where}: label {raw!r} must be non-empty text (quote it)")
        if label is not None and label not in CLASSES:
            known = ", ".join(CLASSES)
            raise ConfigError(f"{where}: {raw!r} maps to {label!r}, not one of {known} or null")
        out[raw] = label
    return out


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
        return {
            "max_pixels": self.max_pixels,
            "min_side": self.min_side,
            "allow_modality": tuple(self.allow_modality),
            "allow_for_processing": self.allow_for_processing,
            "deadline_s": self.decode_timeout_s,
        }


@dataclasses.dataclass
class InspectConfig(ReaderConfig):
    """`cxrguide inspect FILE...`: the reader's verdict per file; optionally the model's input."""

    model_input: int = _f(
        0, "also build the SIZE x SIZE square a model of that input side sees", metavar="SIZE"
    )
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

    source: list[str] = _f(
        [],
        "KIND=PATH or KIND:NAME=PATH, repeatable (folder/table: see docs/sources.md)",
        metavar="KIND=PATH",
    )
    out: Path | None = _f(None, "output folder", metavar="DIR")
    size: int = _f(512, "side of the square decoded-image cache")
    seed: int = _f(0, "seed for the split and the quota sampling")
    val_fraction: float = _f(0.1, "share of each source x class in the val split")
    test_fraction: float = _f(0.1, "share of each source x class in the test split")
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
    label_map: Path | dict[str, Any] | None = _f(
        None,
        "folder/table sources: YAML of source label -> Normal|Pneumonia|COVID-19|null, over "
        "the default map (docs/sources.md); saved resolved, so a changed file re-prepares",
        metavar="FILE.yaml",
    )

    def validate(self) -> None:
        if not 32 <= self.size <= 2048:
            raise ConfigError("size: must be between 32 and 2048")
        if not (
            0 <= self.val_fraction < 1
            and 0 <= self.test_fraction < 1
            and self.val_fraction + self.test_fraction < 1
        ):
            raise ConfigError("val_fraction/test_fraction: each in [0, 1), together below 1")
        for spec in self.source:
            parse_source_spec(spec)
        # the map in effect, not its file name, is the config: prepare_config.yaml and the
        # pipeline's fingerprint then change when the file's content does
        self.label_map = read_label_map(self.label_map) or None

    @property
    def reader(self) -> ReaderConfig:
        return ReaderConfig(
            max_pixels=self.max_pixels,
            min_side=self.min_side,
            allow_modality=list(self.allow_modality),
            allow_for_processing=self.allow_for_processing,
            decode_timeout_s=self.decode_timeout_s,
        )
