"""Typed configuration: dataclasses in, YAML on disk, CLI flags generated from the fields.

Every step has one dataclass. Values come from (lowest to highest priority) the dataclass
defaults, a YAML file given with ``--config``, and command-line flags. Each field becomes the flag
``--field-name`` so every flag maps to exactly one config field. The resolved config is saved
beside the step's output so a run folder describes itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from cxrguide.errors import ConfigError

T = TypeVar("T")


def _check(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to the annotation ``tp`` or raise a ConfigError naming ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(tp)[:1] or (Any,)
        items = [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrongly typed values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs = {k: _check(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Plain YAML-able structure (paths as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def save_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | None = None) -> T:
    """Defaults < YAML file < overrides (already-typed values, e.g. from CLI flags)."""
    data: dict[str, Any] = load_yaml(path) if path else {}
    where = str(path) if path else "config"
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, data, where)


def _flag_type(tp: Any) -> tuple[dict[str, Any], bool]:
    """argparse kwargs for a field annotation, and whether it is a list."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _flag_type(args[0])
    if origin is Literal:
        choices = get_args(tp)
        return {"choices": choices, "type": type(choices[0])}, False
    if origin in (list, tuple):
        inner, _ = _flag_type(get_args(tp)[0])
        return inner, True
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}, False
    if tp in (int, float, str, Path):
        return {"type": tp}, False
    return {"type": str}, False


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()
) -> None:
    """Add ``--config`` and one ``--field-name`` flag per dataclass field (help from metadata)."""
    parser.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML config file")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        kwargs, is_list = _flag_type(hints[field.name])
        flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else None
        if default is not None and not is_list and kwargs.get("action") is None:
            help_text = f"{help_text} (default: {default})".strip()
        if is_list:
            kwargs = {**kwargs, "action": "append"}
        metavar = field.metadata.get("metavar")
        if metavar and kwargs.get("action") is not argparse.BooleanOptionalAction:
            kwargs["metavar"] = metavar
        parser.add_argument(flag, dest=field.name, default=None, help=help_text, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Resolve a step config from ``--config`` plus the flags that were given."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
    return load_config(cls, getattr(args, "config", None), overrides)


# ---------------------------------------------------------------------------------------------
# Step configs. Field metadata "help" becomes the CLI flag's help text.
# ---------------------------------------------------------------------------------------------


def _f(default: Any, help: str, **meta: Any) -> Any:
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help, **meta}
        )
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass
class ReaderConfig:
    """How every CXR file is read (``inspect`` and ``prepare`` share it)."""

    max_pixels: int = _f(64_000_000, "refuse images with more pixels (decompression-bomb guard)")
    min_side: int = _f(64, "refuse images whose shorter side is below this (not a CXR)")

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
        return ReaderConfig(max_pixels=self.max_pixels, min_side=self.min_side)


@dataclasses.dataclass
class TrainConfig:
    """`cxrguide train`: Stage I (frozen body), II (fine-tuning), III (guided attention)."""

    stage: Literal[1, 2] = _f(1, "1 frozen body + head, 2 fine-tune the best runs")
    data: Path | None = _f(None, "prepared folder (from 'cxrguide prepare')", metavar="PREP")
    backbone: str = _f("mobilenet_v2", "model name, comma list, or 'all' (see 'cxrguide models')")
    from_run: Path | None = _f(
        None, "Stage II/III: a leaderboard CSV or a run folder", metavar="RUN|CSV", flag="--from"
    )
    top: int = _f(4, "Stage II/III from a leaderboard: how many of the best runs")
    out: Path = _f(Path("runs"), "folder that receives one run folder per model", metavar="RUNS")
    weights: str = _f("imagenet", "imagenet | none | PATH (ImageNet needs the hub or a local file)")
    image_size: int = _f(0, "input side in px (0: the backbone's own Table 2 size)")
    max_epochs: int = _f(100, "maximum epochs (early stopping usually ends sooner)")
    batch_size: int = _f(32, "batch size")
    lr: float = _f(1e-4, "SGD learning rate for Stage I (the study's 1e-4)")
    finetune_lr: float = _f(1e-5, "SGD learning rate for Stage II/III (body and head)")
    momentum: float = _f(0.9, "SGD momentum (the study does not state it)")
    l2: float = _f(1e-3, "L2 penalty lambda on trainable kernels (the study's 1e-3)")
    patience: int = _f(10, "early stopping patience on val loss (epochs)")
    head_widths: list[int] = _f([128, 64], "hidden widths of the head")
    head_dropouts: list[float] = _f([0.10, 0.05], "dropout after each hidden layer")
    activation: str = _f("elu", "head activation (elu, relu, gelu, silu, leaky_relu)")
    augment: bool = _f(True, "Stage II/III augmentation (rotation, shift, zoom, contrast)")
    hflip: bool = _f(False, "allow horizontal flips (off: anatomy is not symmetric)")
    feature_cache: bool = _f(True, "Stage I: train the head on cached body features")
    seed: int = _f(0, "random seed (same seed, same CPU, same result)")
    precision: Literal["fp32", "bf16", "fp16"] = _f("fp32", "bf16 autocast (CPU/CUDA), fp16 (CUDA)")
    channels_last: bool = _f(False, "channels-last memory format (faster convs on CUDA/AVX-512)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    workers: int = _f(0, "data-loader worker processes")
    resume: bool = _f(False, "continue a killed run from its last checkpoint")

    def validate(self) -> None:
        for name in ("max_epochs", "batch_size", "patience", "top"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")
        if self.image_size and not 32 <= self.image_size <= 1024:
            raise ConfigError("image_size: must be 0 or between 32 and 1024")
        if self.lr <= 0 or self.finetune_lr <= 0:
            raise ConfigError("lr: learning rates must be positive")
        if len(self.head_widths) != len(self.head_dropouts):
            raise ConfigError("head_dropouts: need one dropout per head width")


# ---- lung segmentation (`cxrguide lungs ...`) -----------------------------------------------


@dataclasses.dataclass
class LungsPrepareConfig:
    """`cxrguide lungs prepare`: lung annotations -> image + mask cache with a patient split."""

    source: list[str] = _f([], "v7=DIR (Darwin JSON) or masks=DIR (image + mask folders), repeatable", metavar="KIND=PATH")  # fmt: skip
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
    out: Path | None = _f(None, "run folder (resumes when it holds an unfinished run)", metavar="RUN")  # fmt: skip
    arch: Literal["basicunet", "smp"] = _f("basicunet", "MONAI BasicUNet, or segmentation-models-pytorch Unet")  # fmt: skip
    features: list[int] = _f([16, 32, 64, 128, 256, 16], "BasicUNet widths (6 values)")
    encoder: str = _f("resnet34", "smp encoder name (arch smp)")
    encoder_weights: str | None = _f(None, "smp encoder weights: a local file, or 'imagenet' (downloads)")  # fmt: skip
    size: int = _f(0, "training side in px (0: the prepared cache size)")
    batch_size: int = _f(8, "batch size")
    max_epochs: int = _f(40, "maximum epochs (early stopping usually ends sooner)")
    patience: int = _f(8, "early stopping patience on val loss (epochs)")
    lr: float = _f(1e-3, "AdamW learning rate")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    dice_weight: float = _f(1.0, "weight of the soft Dice loss")
    bce_weight: float = _f(1.0, "weight of the binary cross-entropy loss")
    augment: bool = _f(True, "random affine + contrast augmentation, applied to image and mask alike")  # fmt: skip
    rotate: float = _f(10.0, "max rotation in degrees")
    zoom: float = _f(0.1, "max relative zoom in or out")
    shift: float = _f(0.06, "max shift as a fraction of the side")
    contrast: float = _f(0.25, "max gamma / contrast change (image only)")
    hflip: bool = _f(False, "allow horizontal flips (off: anatomy is not symmetric)")
    threshold: float = _f(0.5, "probability threshold for a lung pixel (evaluate / predict)")
    seed: int = _f(0, "random seed (same seed, same CPU, same result)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    precision: Literal["fp32", "bf16", "fp16"] = _f("fp32", "bf16 autocast (CPU/CUDA), fp16 (CUDA)")
    workers: int = _f(0, "data-loader worker processes")
    progress: bool = _f(True, "show progress bars and one line per epoch")

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


@dataclasses.dataclass
class LungsEvaluateConfig:
    """`cxrguide lungs evaluate RUN`: Dice, IoU and HD95 per image and mean on val/test."""

    run: Path | None = _f(None, "run folder written by 'cxrguide lungs train'", metavar="RUN")
    splits: list[str] = _f(["val", "test"], "splits to evaluate")
    batch_size: int = _f(16, "images per forward pass")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be >= 1")


@dataclasses.dataclass
class LungsPredictConfig:
    """`cxrguide lungs predict RUN --data PREP | IMAGE...`: post-processed lung masks."""

    run: Path | None = _f(None, "run folder written by 'cxrguide lungs train'", metavar="RUN")
    data: Path | None = _f(None, "a classifier folder written by 'cxrguide prepare'", metavar="PREP")  # fmt: skip
    images: list[str] = _f([], "image files to segment (instead of --data)")
    out: Path | None = _f(None, "--data: folder for the mask cache (default PREP/cache); images: mask PNGs", metavar="DIR")  # fmt: skip
    overlay: Path | None = _f(None, "images: also write overlay PNGs here", metavar="DIR")
    batch_size: int = _f(16, "images per forward pass")
    threshold: float | None = _f(None, "probability threshold (default: the run's)")
    min_area: float = _f(0.05, "lung area below this fraction of the image is implausible")
    max_area: float = _f(0.75, "lung area above this fraction of the image is implausible")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be >= 1")
        if not 0 <= self.min_area < self.max_area <= 1:
            raise ConfigError("min_area/max_area: need 0 <= min_area < max_area <= 1")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError("threshold: must be in (0, 1)")
