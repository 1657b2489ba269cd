"""Lung segmentation: `cxrguide lungs prepare | train | evaluate | predict`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from cxrguide.config.core import _f, mlflow_field
from cxrguide.errors import ConfigError

# ---- lung segmentation (`cxrguide lungs ...`) -----------------------------------------------


@dataclasses.dataclass
class LungsPrepareConfig:
    """`cxrguide lungs prepare`: lung annotations -> image + mask cache with a patient split."""

    source: list[str] = _f(
        [],
        "v7=DIR (Darwin JSON) or masks=DIR (image + mask folders), repeatable",
        metavar="KIND=PATH",
    )
    out: Path | None = _f(None, "output folder", metavar="DIR")
    size: int = _f(256, "side of the square image and mask caches")
    seed: int = _f(0, "seed for the patient-grouped split")
    val_fraction: float = _f(0.1, "share of images in the val split")
    test_fraction: float = _f(0.1, "share of images in the test split")
    ignore: Literal["lung", "background"] = _f(
        "lung", "V7 'Ignore' regions (devices over a lung): keep as lung or cut out"
    )
    workers: int = _f(0, "decoding processes (0: all cores)")
    max_pixels: int = _f(64_000_000, "refuse images with more pixels (decompression-bomb guard)")
    min_side: int = _f(64, "refuse images whose shorter side is below this")

    def validate(self) -> None:
        if not 32 <= self.size <= 2048:
            raise ConfigError("size: must be between 32 and 2048")
        for spec in self.source:
            if "=" not in spec:
                raise ConfigError(f"source: {spec!r} is not KIND=PATH")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1) or (
            self.val_fraction + self.test_fraction >= 1
        ):
            raise ConfigError("val_fraction/test_fraction: must be >= 0 and sum to below 1")


@dataclasses.dataclass
class LungsTrainConfig:
    """`cxrguide lungs train`: a U-Net on a `lungs prepare` folder (Dice + BCE loss)."""

    data: Path | None = _f(None, "folder written by 'cxrguide lungs prepare'", metavar="DIR")
    out: Path | None = _f(
        None, "run folder (resumes when it holds an unfinished run)", metavar="RUN"
    )
    arch: Literal["basicunet", "smp"] = _f(
        "basicunet", "MONAI BasicUNet, or segmentation-models-pytorch Unet"
    )
    features: list[int] = _f([16, 32, 64, 128, 256, 16], "BasicUNet widths (6 values)")
    encoder: str = _f("resnet34", "smp encoder name (arch smp)")
    encoder_weights: str | None = _f(
        None, "smp encoder weights: a local file, or 'imagenet' (downloads)"
    )
    size: int = _f(0, "training side in px (0: the prepared cache size)", aliases=("--image-size",))
    batch_size: int = _f(8, "batch size")
    max_epochs: int = _f(40, "maximum epochs (early stopping usually ends sooner)")
    patience: int = _f(8, "early stopping patience on val loss (epochs)")
    lr: float = _f(1e-3, "AdamW learning rate")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    dice_weight: float = _f(1.0, "weight of the soft Dice loss")
    bce_weight: float = _f(1.0, "weight of the binary cross-entropy loss")
    augment: bool = _f(
        True,
        "random affine + brightness/contrast (the one augmenter, "
        "data/augment.py); image and mask move together",
    )
    rotate: float = _f(10.0, "max rotation in degrees")
    zoom: float = _f(0.1, "max relative zoom in or out")
    shift: float = _f(0.06, "max shift as a fraction of the side")
    brightness: float = _f(0.15, "max relative brightness change (image only)")
    contrast: float = _f(0.25, "max relative contrast change (image only)")
    hflip: bool = _f(False, "allow horizontal flips (off: anatomy is not symmetric)")
    threshold: float = _f(0.5, "probability threshold for a lung pixel (evaluate / predict)")
    seed: int = _f(0, "random seed (same seed, same CPU, same result)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    precision: Literal["fp32", "bf16", "fp16"] = _f("fp32", "bf16 autocast (CPU/CUDA), fp16 (CUDA)")
    workers: int = _f(0, "data-loader worker processes")
    progress: bool = _f(True, "show progress bars and one line per epoch")
    mlflow: str | None = mlflow_field()

    def validate(self) -> None:
        for name in ("batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")
        if self.arch == "basicunet" and len(self.features) != 6:
            raise ConfigError("features: BasicUNet needs exactly 6 widths")
        if any(f < 1 for f in self.features):
            raise ConfigError("features: widths must be >= 1")
        multiple = 32 if self.arch == "smp" else 16
        if self.size and (self.size < 32 or self.size % multiple):
            raise ConfigError(
                f"size: must be 0 or a multiple of {multiple} (>= 32) for {self.arch}"
            )
        if self.lr <= 0 or self.dice_weight < 0 or self.bce_weight < 0:
            raise ConfigError("lr/dice_weight/bce_weight: lr must be > 0, weights >= 0")
        if not 0 < self.threshold < 1:
            raise ConfigError("threshold: must be in (0, 1)")


_AUTO_BATCH = "images per forward pass (0: 4 on CPU, 16 on CUDA; see bench/lungs.py)"


@dataclasses.dataclass
class LungsEvaluateConfig:
    """`cxrguide lungs evaluate RUN`: Dice, IoU and HD95 per image and mean on val/test."""

    run: Path | None = _f(None, "run folder written by 'cxrguide lungs train'", metavar="RUN")
    splits: list[str] = _f(["val", "test"], "splits to evaluate")
    batch_size: int = _f(0, _AUTO_BATCH)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")

    def validate(self) -> None:
        if self.batch_size < 0:
            raise ConfigError("batch_size: must be >= 0 (0: automatic)")


@dataclasses.dataclass
class LungsPredictConfig:
    """`cxrguide lungs predict RUN --data PREP | IMAGE...`: post-processed lung masks."""

    run: Path | None = _f(None, "run folder written by 'cxrguide lungs train'", metavar="RUN")
    data: Path | None = _f(
        None, "a classifier folder written by 'cxrguide prepare'", metavar="PREP"
    )
    images: list[str] = _f([], "image files to segment (instead of --data)")
    out: Path | None = _f(
        None,
        "--data: folder for the mask cache (default PREP/cache); images: mask PNGs",
        metavar="DIR",
    )
    overlay: Path | None = _f(
        None,
        "also write overlay PNGs here (--data: one per manifest row, <row>_<stem>_overlay.png)",
        metavar="DIR",
    )
    batch_size: int = _f(0, _AUTO_BATCH)
    threshold: float | None = _f(None, "probability threshold (default: the run's)")
    min_area: float = _f(0.05, "lung area below this fraction of the image is implausible")
    max_area: float = _f(0.75, "lung area above this fraction of the image is implausible")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")

    def validate(self) -> None:
        if self.batch_size < 0:
            raise ConfigError("batch_size: must be >= 0 (0: automatic)")
        if not 0 <= self.min_area < self.max_area <= 1:
            raise ConfigError("min_area/max_area: need 0 <= min_area < max_area <= 1")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError("threshold: must be in (0, 1)")
