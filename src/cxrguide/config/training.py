"""`cxrguide train` (every stage) and `cxrguide tune`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from cxrguide.config.core import _f, mlflow_field
from cxrguide.config.weights import WeightsSpec
from cxrguide.errors import ConfigError

# Stage III attention mechanisms (attention/gain.py implements them): the study's three, then
# the ones that keep a marker outside the lungs out of the *decision* (README, shortcut benchmark):
# early-gate (lung gate on every feature map of stride <= 16), lung-input (the film blanked
# outside the dilated lungs), rrr (input-gradient penalty outside them, "Right for the Right
# Reasons", Ross et al. 2017).
MECHANISMS = ("gate", "gain", "external", "early-gate", "lung-input", "rrr")


def parse_attention(items: Iterable[str]) -> list[str]:
    """``["gate,gain", "external"]`` -> ``["gate", "gain", "external"]`` (validated, ordered)."""
    names = [a.strip().lower() for item in items for a in str(item).split(",") if a.strip()]
    unknown = sorted(set(names) - set(MECHANISMS))
    if unknown:
        raise ConfigError(
            f"attention: unknown mechanism(s) {', '.join(unknown)}; choose from "
            f"{', '.join(MECHANISMS)}"
        )
    if not names:
        raise ConfigError(f"attention: give at least one of {', '.join(MECHANISMS)}")
    return [m for m in MECHANISMS if m in names]


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
    weights: str = _f(
        "imagenet",
        "imagenet | phantom | none | PATH (ImageNet needs the hub or a "
        "local file; phantom: a body trained on clean phantoms, built on "
        "first use; {backbone} in PATH: the model name)",
    )
    image_size: int = _f(0, "input side in px (0: the backbone's own Table 2 size)")
    max_epochs: int = _f(100, "maximum epochs (early stopping usually ends sooner)")
    batch_size: int = _f(32, "batch size")
    lr: float = _f(1e-4, "SGD learning rate for Stage I (the study's 1e-4)")
    finetune_lr: float = _f(1e-5, "SGD learning rate for Stage II/III (body and head)")
    momentum: float = _f(0.9, "SGD momentum (the study does not state it)")
    l2: float = _f(1e-3, "L2 penalty lambda on trainable kernels (the study's 1e-3)")
    l2_scope: Literal["head", "all"] = _f(
        "head",
        "kernels the L2 term covers: the head's Dense layers (the study's Keras "
        "semantics) or every trainable kernel of body and head",
    )
    class_weights: Literal["none", "balanced"] = _f(
        "none",
        "weight each image's loss by N / (K n_class) of the training split (balanced) "
        "or not (none, the study's)",
    )
    sampler: Literal["none", "balanced", "group"] = _f(
        "none",
        "draw training batches shuffled (none, the study's), class-balanced with "
        "replacement (balanced), or balanced over class x source (group: every "
        "(class, source) cell of the training split drawn equally often; see --group-by)",
    )
    group_by: Literal["source", "site"] = _f(
        "source",
        "--sampler group, --adversary source: the manifest column that names a film's source",
    )
    adversary: Literal["none", "source"] = _f(
        "none",
        "Stage II/III: a source classifier on the pooled features behind gradient reversal "
        "(source: DANN, Ganin & Lempitsky 2015; the body learns features it cannot tell the "
        "sources apart by) or none",
    )
    adversary_weight: float = _f(
        1.0, "--adversary source: reversal strength, times DANN's ramp 2/(1+exp(-10p))-1"
    )
    patience: int = _f(10, "early stopping patience on val loss (epochs)")
    head_widths: list[int] = _f([128, 64], "hidden widths of the head")
    head_dropouts: list[float] = _f([0.10, 0.05], "dropout after each hidden layer")
    activation: str = _f("elu", "head activation (elu, relu, gelu, silu, leaky_relu)")
    augment: bool = _f(True, "Stage II/III augmentation (rotation, shift, zoom, contrast)")
    hflip: bool = _f(False, "allow horizontal flips (off: anatomy is not symmetric)")
    feature_cache: bool = _f(True, "Stage I: train the head on cached body features")
    seed: int = _f(0, "random seed (same seed, same CPU, same result)")
    calibration: Literal["temperature", "vector"] = _f(
        "temperature", "calibration fitted on val and applied: one temperature or vector scaling"
    )
    false_flag_rate: float = _f(
        0.05, "share of val films above the out-of-distribution threshold (docs/calibration.md)"
    )
    precision: Literal["fp32", "bf16", "fp16"] = _f("fp32", "bf16 autocast (CPU/CUDA), fp16 (CUDA)")
    channels_last: bool = _f(False, "channels-last memory format (faster convs on CUDA/AVX-512)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    workers: int = _f(0, "data-loader worker processes")
    resume: bool = _f(False, "continue a killed run from its last checkpoint (same config)")
    resume_override: bool = _f(
        False, "with --resume: continue with changed settings, recorded in config_changes.yaml"
    )
    progress: bool = _f(True, "progress bars (shown only on a terminal; --no-progress: never)")
    mlflow: str | None = mlflow_field()
    attention: list[str] = _f(
        ["gate", "gain"],
        "Stage III: gate, gain, external, early-gate, lung-input, rrr; comma list "
        "(default gate,gain)",
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
    rrr_weight: float = _f(
        0.01, "Stage III rrr: weight lambda of the input-gradient penalty outside the lungs"
    )
    lung_dilation: float = _f(
        0.03, "Stage III early-gate/lung-input/rrr: lung mask grown by this share of the side"
    )

    def validate(self) -> None:
        WeightsSpec.parse(self.weights)  # an empty value fails here, in one line
        self.attention = parse_attention(self.attention)
        if self.rrr_weight < 0 or not 0 <= self.lung_dilation <= 0.25:
            raise ConfigError("rrr_weight: must be >= 0; lung_dilation: between 0 and 0.25")
        if self.adversary_weight < 0:
            raise ConfigError("adversary_weight: must be >= 0")
        if self.adversary != "none" and self.stage == 1:
            raise ConfigError("adversary: needs a body that trains (--stage 2 or 3), not Stage 1")
        if self.gain_alpha < 0 or self.external_weight < 0 or self.gain_omega <= 0:
            raise ConfigError("gain_alpha/external_weight: must be >= 0; gain_omega: > 0")
        for name in ("max_epochs", "batch_size", "patience", "top"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")
        if self.image_size and not 32 <= self.image_size <= 1024:
            raise ConfigError("image_size: must be 0 or between 32 and 1024")
        if not 0 < self.false_flag_rate < 1:
            raise ConfigError("false_flag_rate: must be between 0 and 1")
        if self.lr <= 0 or self.finetune_lr <= 0:
            raise ConfigError("lr: learning rates must be positive")
        if len(self.head_widths) != len(self.head_dropouts):
            raise ConfigError("head_dropouts: need one dropout per head width")


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

    out: Path | None = _f(
        None, "tune folder: trial runs, plots, study.db (default runs/tune-STUDY)", metavar="DIR"
    )
    trials: int = _f(20, "trials this command runs (a killed trial's retry counts as one)")
    total_trials: int = _f(
        0, "stop once the study holds this many finished trials over all workers (0: no cap)"
    )
    storage: str | None = _f(
        None,
        "SQLAlchemy URL of the study, e.g. postgresql://u:p@host/db (default sqlite:///OUT/study.db)",
        metavar="URL",
    )
    study: str | None = _f(None, "study name (default stage<k>-<backbone>)", metavar="NAME")
    sampler: Literal["tpe", "gp", "random"] = _f(
        "tpe", "multivariate TPE, Gaussian process, or random search"
    )
    batch_sampler: Literal["none", "balanced"] = _f(
        "none", "training batches of every trial: shuffled or class-balanced (train's --sampler)"
    )
    startup_trials: int = _f(5, "random trials before the sampler models the results")
    pruner: Literal["median", "hyperband", "none"] = _f(
        "median", "stop trials whose per-epoch val accuracy trails the others"
    )
    prune_warmup: int = _f(2, "epochs a trial always runs before it may be pruned")
    paper_first: bool = _f(
        True, "enqueue the configured values (the paper's by default) as the first trial"
    )
    lr_range: list[float] = _f(
        [1e-6, 1e-1],
        "learning-rate LOW and HIGH, log scale (Stage 2 tunes "
        "finetune_lr); LOW HIGH or the flag twice",
    )
    l2_range: list[float] = _f(
        [1e-6, 1e-1], "L2 lambda LOW and HIGH, log scale; LOW HIGH or the flag twice"
    )
    momentum_range: list[float] = _f(
        [0.0, 0.99], "SGD momentum LOW and HIGH; LOW HIGH or the flag twice"
    )
    batch_sizes: list[int] = _f([8, 16, 32, 64], "batch sizes to try; flag repeated")
    width_range: list[int] = _f(
        [16, 512],
        "Stage 1: LOW and HIGH width of each hidden head layer, log "
        "scale; LOW HIGH or the flag twice",
    )
    dropout_range: list[float] = _f(
        [0.0, 0.5],
        "Stage 1: LOW and HIGH dropout after each hidden layer; LOW HIGH or the flag twice",
    )
    activations: list[str] = _f(
        ["elu", "relu", "gelu", "silu", "leaky_relu"],
        "Stage 1: head activations to try; flag repeated",
    )
    heartbeat: int = _f(
        60,
        "seconds between a running trial's liveness marks; one silent "
        "for twice that is retried (0: off)",
    )
    retries: int = _f(1, "how often a trial whose worker died is run again")

    def validate(self) -> None:
        super().validate()
        if self.stage not in (1, 2):
            raise ConfigError(f"stage: tune searches Stage 1 or 2, not {self.stage}")
        for name in (
            "trials",
            "startup_trials",
            "prune_warmup",
            "heartbeat",
            "retries",
            "total_trials",
        ):
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
            raise ConfigError(
                f"batch_size: the first trial's {self.batch_size} is not in "
                f"batch_sizes {self.batch_sizes}"
            )
        if self.stage == 1:
            for w in self.head_widths:
                _in(w, self.width_range, "width_range", "head_widths")
            for d in self.head_dropouts:
                _in(d, self.dropout_range, "dropout_range", "head_dropouts")
            if self.activation not in self.activations:
                raise ConfigError(
                    f"activation: the first trial's {self.activation!r} is not in "
                    f"activations {self.activations}"
                )
