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
        if is_list:  # `--seeds 0 1 2` or `--seeds 0 --seeds 1 ...` (default None: no leftovers)
            kwargs = {**kwargs, "action": "extend", "nargs": "+"}
        metavar = field.metadata.get("metavar")
        if metavar and kwargs.get("action") is not argparse.BooleanOptionalAction:
            kwargs["metavar"] = metavar
        aliases = field.metadata.get("aliases", ())
        parser.add_argument(flag, *aliases, dest=field.name, default=None, help=help_text, **kwargs)


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

    stage: Literal[1, 2, 3] = _f(
        1, "1 frozen body + head, 2 fine-tune the best runs, 3 guided attention"
    )
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
    attention: list[str] = _f(
        ["gate", "gain"],
        "Stage III: gate, gain, external; comma list (default gate,gain)",
        metavar="LIST",
    )
    gain_alpha: float = _f(1.0, "Stage III: weight alpha of GAIN's attention-mining loss")
    gain_sigma: float = _f(0.5, "Stage III: soft-mask threshold sigma of GAIN")
    gain_omega: float = _f(10.0, "Stage III: soft-mask sharpness omega of GAIN")
    external_weight: float = _f(1.0, "Stage III: weight of the lung-mask supervision L_e")
    gain_second_order: bool = _f(
        True, "Stage III: exact Grad-CAM gradient (create_graph); off: CAM weights as constants"
    )
    gain_bn: Literal["frozen", "clean", "eval"] = _f(
        "frozen", "Stage III with GAIN: BatchNorm frozen, or erased pass on clean/running stats"
    )
    lung_model: Path | None = _f(
        None, "Stage III: the lung run behind the mask cache (default: its record)", metavar="RUN"
    )

    def validate(self) -> None:
        from cxrguide.attention.gain import parse_attention

        self.attention = parse_attention(self.attention)
        if self.gain_alpha < 0 or self.external_weight < 0 or self.gain_omega <= 0:
            raise ConfigError("gain_alpha/external_weight: must be >= 0; gain_omega: > 0")
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
    size: int = _f(0, "training side in px (0: the prepared cache size)", aliases=("--image-size",))
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


# ---- hyper-parameter tuning (`cxrguide tune`) ------------------------------------------------


def _in(value: float, bounds: list, name: str, field: str) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise ConfigError(
            f"{field}: the first trial's value {value!r} lies outside {name} {list(bounds)}"
        )


@dataclasses.dataclass
class TuneConfig(TrainConfig):
    """`cxrguide tune`: Optuna search over head and optimiser; every `train` field plus these.

    The `train` fields are the base of every trial (and, with ``paper_first``, the first trial's
    values), so a `train` YAML works as ``--config`` and an exported best.yaml is a `train` YAML.
    """

    out: Path | None = _f(None, "tune folder: trial runs, plots, study.db (default runs/tune-STUDY)", metavar="DIR")  # fmt: skip
    trials: int = _f(20, "trials this command runs (a killed trial's retry counts as one)")
    total_trials: int = _f(
        0, "stop once the study holds this many finished trials over all workers (0: no cap)"
    )
    storage: str | None = _f(None, "SQLAlchemy URL of the study, e.g. postgresql://u:p@host/db (default sqlite:///OUT/study.db)", metavar="URL")  # fmt: skip
    study: str | None = _f(None, "study name (default stage<k>-<backbone>)", metavar="NAME")
    sampler: Literal["tpe", "gp", "random"] = _f("tpe", "multivariate TPE, Gaussian process, or random search")  # fmt: skip
    startup_trials: int = _f(5, "random trials before the sampler models the results")
    pruner: Literal["median", "hyperband", "none"] = _f("median", "stop trials whose per-epoch val accuracy trails the others")  # fmt: skip
    prune_warmup: int = _f(2, "epochs a trial always runs before it may be pruned")
    paper_first: bool = _f(True, "enqueue the configured values (the paper's by default) as the first trial")  # fmt: skip
    lr_range: list[float] = _f([1e-6, 1e-1], "learning-rate LOW and HIGH, log scale (Stage 2 tunes finetune_lr); LOW HIGH or the flag twice")  # fmt: skip
    l2_range: list[float] = _f(
        [1e-6, 1e-1], "L2 lambda LOW and HIGH, log scale; LOW HIGH or the flag twice"
    )
    momentum_range: list[float] = _f(
        [0.0, 0.99], "SGD momentum LOW and HIGH; LOW HIGH or the flag twice"
    )
    batch_sizes: list[int] = _f([8, 16, 32, 64], "batch sizes to try; flag repeated")
    width_range: list[int] = _f([16, 512], "Stage 1: LOW and HIGH width of each hidden head layer, log scale; LOW HIGH or the flag twice")  # fmt: skip
    dropout_range: list[float] = _f([0.0, 0.5], "Stage 1: LOW and HIGH dropout after each hidden layer; LOW HIGH or the flag twice")  # fmt: skip
    activations: list[str] = _f(["elu", "relu", "gelu", "silu", "leaky_relu"], "Stage 1: head activations to try; flag repeated")  # fmt: skip
    heartbeat: int = _f(60, "seconds between a running trial's liveness marks; one silent for twice that is retried (0: off)")  # fmt: skip
    retries: int = _f(1, "how often a trial whose worker died is run again")

    def validate(self) -> None:
        super().validate()
        if self.stage not in (1, 2):
            raise ConfigError(f"stage: tune searches Stage 1 or 2, not {self.stage}")
        for name in ("trials", "startup_trials", "prune_warmup", "heartbeat", "retries",
                     "total_trials"):  # fmt: skip
            if getattr(self, name) < (1 if name == "trials" else 0):
                raise ConfigError(f"{name}: must be >= {1 if name == 'trials' else 0}")
        for name in ("lr_range", "l2_range", "momentum_range", "width_range", "dropout_range"):
            bounds = getattr(self, name)
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise ConfigError(f"{name}: need two values LOW HIGH with LOW < HIGH, got {bounds}")
        if self.lr_range[0] <= 0 or self.l2_range[0] <= 0 or self.width_range[0] < 1:
            raise ConfigError("lr_range/l2_range/width_range: log-scale ranges must be positive")
        if self.momentum_range[0] < 0 or self.momentum_range[1] >= 1:
            raise ConfigError("momentum_range: must lie within [0, 1)")
        if self.dropout_range[0] < 0 or self.dropout_range[1] >= 1:
            raise ConfigError("dropout_range: must lie within [0, 1)")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError("batch_sizes: need at least one size, all >= 1")
        if not self.activations:
            raise ConfigError("activations: need at least one activation")
        if not self.paper_first:
            return
        lr_name = "lr" if self.stage == 1 else "finetune_lr"
        _in(getattr(self, lr_name), self.lr_range, "lr_range", lr_name)
        _in(self.l2, self.l2_range, "l2_range", "l2")
        _in(self.momentum, self.momentum_range, "momentum_range", "momentum")
        if self.batch_size not in self.batch_sizes:
            raise ConfigError(f"batch_size: the first trial's {self.batch_size} is not in batch_sizes {self.batch_sizes}")  # fmt: skip
        if self.stage == 1:
            for w in self.head_widths:
                _in(w, self.width_range, "width_range", "head_widths")
            for d in self.head_dropouts:
                _in(d, self.dropout_range, "dropout_range", "head_dropouts")
            if self.activation not in self.activations:
                raise ConfigError(f"activation: the first trial's {self.activation!r} is not in activations {self.activations}")  # fmt: skip


# ---- inference (`cxrguide predict | export | serve`) -----------------------------------------

_BACKEND_HELP = "auto | fp32 | channels_last | bf16 | onnx (auto: the fastest agreeing CPU path)"
_CAM_METHODS = Literal["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"]


@dataclasses.dataclass
class PredictConfig:
    """`cxrguide predict RUN INPUT...`: labels for new PNG/JPEG/DICOM files or folders."""

    run: Path | None = _f(None, "run folder written by 'cxrguide train'", metavar="RUN")
    inputs: list[str] = _f([], "image files or folders (folders are searched recursively)")
    format: Literal["table", "json", "csv"] = _f("table", "output format (--json, --csv)")
    output: Path | None = _f(None, "write the results here instead of stdout", metavar="FILE")
    cam: Path | None = _f(None, "write Grad-CAM overlay PNGs into this folder", metavar="DIR")
    cam_method: _CAM_METHODS = _f("gradcam", "CAM method for --cam")
    batch_size: int = _f(16, "images per forward pass")
    backend: Literal["auto", "fp32", "channels_last", "bf16", "onnx"] = _f("auto", _BACKEND_HELP)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    lung_model: Path | None = _f(None, "lung segmenter run (default: the run's own, if any)", metavar="RUN")  # fmt: skip
    max_pixels: int = _f(64_000_000, "refuse images with more pixels (decompression-bomb guard)")
    threads: int = _f(0, "CPU threads for inference (0: the library default)")
    progress: bool = _f(True, "show a progress bar on stderr")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be >= 1")
        if self.max_pixels <= 0 or self.threads < 0:
            raise ConfigError("max_pixels/threads: max_pixels must be > 0, threads >= 0")


@dataclasses.dataclass
class ExportConfig:
    """`cxrguide export RUN --format onnx|torchscript --out FILE`: a portable classifier file."""

    run: Path | None = _f(None, "run folder written by 'cxrguide train'", metavar="RUN")
    format: Literal["onnx", "torchscript"] = _f("onnx", "file format")
    out: Path | None = _f(None, "output file (.onnx or .pt)", metavar="FILE")
    opset: int = _f(17, "ONNX opset version")
    check: bool = _f(True, "check the file against PyTorch (probabilities within 1e-4)")

    def validate(self) -> None:
        if not 13 <= self.opset <= 21:
            raise ConfigError("opset: must be between 13 and 21")


@dataclasses.dataclass
class ServeConfig:
    """`cxrguide serve RUN`: REST API + web page on one run."""

    run: Path | None = _f(None, "run folder written by 'cxrguide train'", metavar="RUN")
    host: str = _f("127.0.0.1", "interface to listen on (0.0.0.0 exposes it to the network)")
    port: int = _f(8000, "TCP port")
    backend: Literal["auto", "fp32", "channels_last", "bf16", "onnx"] = _f("auto", _BACKEND_HELP)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    lung_model: Path | None = _f(None, "lung segmenter run (default: the run's own, if any)", metavar="RUN")  # fmt: skip
    max_upload_mb: float = _f(32.0, "refuse uploads larger than this many MiB")
    max_pixels: int = _f(40_000_000, "refuse images with more pixels (checked before decoding)")
    max_concurrent: int = _f(4, "uploads held in memory at once (others wait)")
    threads: int = _f(0, "CPU threads for inference (0: the library default)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = _f("info", "uvicorn log level")  # fmt: skip

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port: must be between 0 and 65535")
        if self.max_upload_mb <= 0 or self.max_pixels <= 0 or self.max_concurrent < 1:
            raise ConfigError("max_upload_mb/max_pixels/max_concurrent: must be positive")
        if self.threads < 0:
            raise ConfigError("threads: must be >= 0")


# ---- benchmarks (`cxrguide bench ...`) -----------------------------------------------------


@dataclasses.dataclass
class ShortcutBenchConfig:
    """`cxrguide bench shortcut`: Stage II vs Stage III variants on shortcut-laden phantoms."""

    out: Path | None = _f(None, "benchmark folder (data, runs, table; resumes)", metavar="DIR")
    n: int = _f(360, "synthetic images in the main set (train/val/test)")
    size: int = _f(128, "image side in px (synthetic, cache and model input)")
    shortcut_rate: float = _f(0.95, "share of films whose marker sits at its class's position")
    shortcut_test: int = _f(120, "images in the shortcut_test split (markers of another class)")
    synth_seed: int = _f(0, "seed of the synthetic data (the same data for every run)")
    backbone: str = _f("mobilenet_v2", "model for every run")
    weights: str = _f("none", "starting weights of every run: none | imagenet | PATH")
    seeds: list[int] = _f([0, 1, 2], "training seed (initialisation, batch order); repeatable")
    variants: list[str] = _f(
        ["stage2", "input-mask", "gate", "gain", "external", "gate+gain", "gate+gain+external"],
        "stage2, input-mask (stage2 on films times their lung masks), or Stage III mechanisms "
        "joined by '+' (gate, gain, external), optionally @clean or @eval (GAIN's BatchNorm "
        "handling, see --gain-bn of train); comma list",
    )
    lungs: str = _f("truth", "lung masks: 'truth' (the generator's masks) or a lung RUN folder")
    max_epochs: int = _f(10, "epochs per run (the same budget for every variant)")
    start: Literal["scratch", "stage2"] = _f(
        "stage2",
        "variants continue the seed's Stage II run (the study's order), or start "
        "from the seeded random network (scratch)",
    )
    finetune_epochs: int = _f(5, "start stage2: epochs every variant adds to the Stage II run")
    batch_size: int = _f(16, "batch size")
    optimizer: Literal["adam", "sgd"] = _f(
        "adam", "optimizer of every run (from random weights SGD barely moves in this budget)"
    )
    lr: float = _f(1e-3, "learning rate of every run")
    momentum: float = _f(0.9, "SGD momentum (optimizer sgd)")
    l2: float = _f(1e-3, "L2 penalty lambda on kernels")
    augment: bool = _f(False, "training augmentation (off: from random weights it slows learning)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    workers: int = _f(2, "processes for synth and prepare")

    def validate(self) -> None:
        from cxrguide.attention.gain import parse_attention

        if self.n < 30 or self.shortcut_test < 3:
            raise ConfigError("n/shortcut_test: need n >= 30 and shortcut_test >= 3")
        if not 32 <= self.size <= 1024:
            raise ConfigError("size: must be between 32 and 1024")
        if not 0 <= self.shortcut_rate <= 1:
            raise ConfigError("shortcut_rate: must be in [0, 1]")
        self.variants = [v.strip() for item in self.variants for v in item.split(",") if v.strip()]
        if not self.seeds or not self.variants:
            raise ConfigError("seeds/variants: give at least one of each")
        for v in self.variants:
            mechanisms, _, bn = v.partition("@")
            if mechanisms not in ("stage2", "input-mask"):
                parse_attention(mechanisms.split("+"))
            if bn not in ("", "frozen", "clean", "eval"):
                raise ConfigError(f"variants: {v!r}: '@{bn}' is not @frozen, @clean or @eval")
        if min(self.max_epochs, self.finetune_epochs, self.batch_size) < 1 or self.lr <= 0:
            raise ConfigError("max_epochs/finetune_epochs/batch_size/lr: must be positive")


# ---- the whole chain (`cxrguide pipeline`) ----------------------------------------------------


@dataclasses.dataclass
class PipelineConfig:
    """`cxrguide pipeline`: every step from one YAML; each section holds that step's own fields.

    Sections are checked against the step's config class (``synth`` -> SynthConfig, ``prepare``
    -> PrepareConfig, ``lungs_prepare``/``lungs`` -> LungsPrepareConfig/LungsTrainConfig,
    ``stage1``..``stage3`` -> TrainConfig, ``tune`` -> TuneConfig), so a typo names its field.
    Paths between steps (out, data, from) are filled in by the pipeline.
    """

    out: Path = _f(Path("runs/pipeline"), "output folder of the whole chain", metavar="DIR")
    seed: int = _f(0, "seed for every step (same seed, same CPU, same result)")
    sources: list[str] = _f(
        [], "real data KIND=PATH (empty: synthetic phantoms)", metavar="KIND=PATH"
    )
    lung_sources: list[str] = _f(
        [], "lung data v7=PATH / masks=PATH (empty: the phantoms' exact masks)", metavar="KIND=PATH"
    )
    synth: dict[str, Any] = _f({}, "SynthConfig fields for the synthetic data")
    prepare: dict[str, Any] = _f({}, "PrepareConfig fields")
    lungs_prepare: dict[str, Any] = _f({}, "LungsPrepareConfig fields")
    lungs: dict[str, Any] = _f({}, "LungsTrainConfig fields for the U-Net")
    stage1: dict[str, Any] = _f({}, "TrainConfig fields for Stage I")
    tune: dict[str, Any] = _f({}, "TuneConfig fields; trials: 0 skips tuning")
    stage2: dict[str, Any] = _f({}, "TrainConfig fields for Stage II")
    stage3: dict[str, Any] = _f({}, "TrainConfig fields for Stage III")
    explain: dict[str, Any] = _f({}, "options of the Grad-CAM figures")
    report: dict[str, Any] = _f({}, "options of the HTML report")
