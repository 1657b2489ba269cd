"""`cxrguide bench ...`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, NamedTuple

from cxrguide.config.core import _f
from cxrguide.config.training import TrainConfig, parse_attention
from cxrguide.errors import ConfigError

# ---- benchmarks (`cxrguide bench ...`) -----------------------------------------------------


@dataclasses.dataclass
class ShortcutBenchConfig:
    """`cxrguide bench shortcut`: Stage II vs Stage III variants on shortcut-laden phantoms."""

    out: Path | None = _f(
        Path("bench_out/shortcut"), "benchmark folder (data, runs, table; resumes)", metavar="DIR"
    )
    n: int = _f(360, "synthetic images in the main set (train/val/test)")
    size: int = _f(128, "image side in px (synthetic, cache and model input)")
    shortcut_rate: float = _f(0.95, "share of films whose marker sits at its class's position")
    shortcut_test: int = _f(120, "images in the shortcut_test split (markers of another class)")
    synth_seed: int = _f(0, "seed of the synthetic data (the same data for every run)")
    backbone: str = _f("mobilenet_v2", "model for every run")
    weights: str = _f("none", "starting weights of every run: none | imagenet | phantom | PATH")
    seeds: list[int] = _f([0, 1, 2], "training seed (initialisation, batch order); repeatable")
    variants: list[str] = _f(
        [
            "stage2",
            "input-mask",
            "gate",
            "gain",
            "external",
            "gate+gain",
            "gate+gain+external",
            "early-gate",
            "lung-input",
            "rrr",
        ],
        "stage2, input-mask (stage2 on films times their lung masks), or Stage III mechanisms "
        "joined by '+' (gate, gain, external, early-gate, lung-input, rrr), optionally @clean "
        "or @eval (GAIN's BatchNorm handling, see --gain-bn of train); comma list",
    )
    rrr_weight: float = _f(0.01, "weight lambda of the rrr variants' input-gradient penalty")
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


GROUP_SUFFIX = "-group"  # a variant trained with batches balanced over class x source
ADV_SUFFIX = "-adv"  # a variant trained against a source adversary (DANN, train --adversary)
QUICK_VARIANTS = ["stage1", "stage1-group"]


class SourceVariant(NamedTuple):
    stage: int
    attention: list[str] | None
    group: bool
    adversary: bool = False


def parse_source_variant(name: str) -> SourceVariant:
    """``"gate+gain-group"`` -> (3, ["gate", "gain"], True, False); ``"stage1"`` -> (1, None,
    False, False).

    ``stage1``: frozen body + head; ``stage2``: plain fine-tuning; anything else: Stage III
    mechanisms joined by '+'. Suffixes, in any order: ``-group`` trains with class x source
    balanced batches, ``-adv`` against a source adversary (Stage II/III only: the body trains).
    """

    base, group, adversary = name, False, False
    while base.endswith((GROUP_SUFFIX, ADV_SUFFIX)):
        if base.endswith(GROUP_SUFFIX):
            base, group = base[: -len(GROUP_SUFFIX)], True
        else:
            base, adversary = base[: -len(ADV_SUFFIX)], True
    if base == "stage1":
        if adversary:
            raise ConfigError("-adv needs a body that trains (stage2 or Stage III), not stage1")
        return SourceVariant(1, None, group, adversary)
    if base == "stage2":
        return SourceVariant(2, None, group, adversary)
    return SourceVariant(3, parse_attention(base.split("+")), group, adversary)


@dataclasses.dataclass
class SourcesBenchConfig:
    """`cxrguide bench sources`: leave one source out, per variant, vs internal accuracy."""

    data: Path | None = _f(None, "prepared folder with several sources", metavar="PREP")
    out: Path | None = _f(
        Path("bench_out/sources"), "study folder (runs, sources.json; resumes)", metavar="DIR"
    )
    by: Literal["source", "site"] = _f(
        "source", "manifest column that names a film's source (phantoms: site = style)"
    )
    backbone: str = _f("efficientnet_lite0", "model for every run")
    weights: str = _f("imagenet", "starting weights of every run: none | imagenet | phantom | PATH")
    size: int = _f(128, "model input side in px (the cache is resized to it)")
    seeds: list[int] = _f([0], "training seed (initialisation, batch order); repeatable")
    variants: list[str] = _f(
        [
            "stage1",
            "stage1-group",
            "stage2",
            "stage2-group",
            "gate+gain",
            "early-gate",
            "lung-input",
            "rrr",
        ],
        "stage1 (frozen body + head), stage2 (fine-tuning), or Stage III mechanisms joined by "
        "'+' (gate, gain, external, early-gate, lung-input, rrr); suffix -group: batches "
        "balanced over class x source; suffix -adv (stage2 and Stage III): a source adversary "
        "behind gradient reversal (train --adversary source); comma list",
    )
    quick: bool = _f(False, f"a short study: variants {','.join(QUICK_VARIANTS)}, first seed")
    lungs: str = _f(
        "",
        "lung U-Net RUN for Stage III variants (masks predicted once into PREP's lung cache); "
        "empty: use the cache PREP already has",
    )
    folds: list[str] = _f(
        [],
        "train only these folds ('all' = the all-sources run, or held-out source names; comma "
        "list): one process per fold on the same --out runs a study in parallel; sources.json "
        "is written by a run over every fold (finished runs are reused)",
    )
    min_films: int = _f(50, "a source with fewer films is skipped (stated in the output)")
    min_test: int = _f(10, "a source needs this many films in the test split (internal accuracy)")
    min_group: int = _f(5, "worst-group accuracy: class x source groups with at least this many")
    stage1_epochs: int = _f(30, "epochs of the Stage I head (on cached features)")
    stage1_lr: float = _f(0.01, "SGD learning rate of the Stage I head")
    max_epochs: int = _f(3, "epochs of every Stage II/III run (each continues the fold's Stage I)")
    batch_size: int = _f(32, "batch size")
    lr: float = _f(1e-4, "Adam learning rate of Stage II/III")
    l2: float = _f(1e-3, "L2 penalty lambda on the head's kernels")
    augment: bool = _f(False, "Stage II/III training augmentation")
    gain_bn: Literal["frozen", "clean", "eval"] = _f(
        "frozen", "GAIN's BatchNorm on the erased pass (see train --gain-bn)"
    )
    rrr_weight: float = _f(0.01, "weight lambda of the rrr variant's input-gradient penalty")
    adversary_weight: float = _f(
        1.0, "-adv variants: reversal strength times DANN's ramp (train --adversary-weight)"
    )
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")

    def validate(self) -> None:
        self.variants = [v.strip() for item in self.variants for v in item.split(",") if v.strip()]
        if self.adversary_weight < 0:
            raise ConfigError("adversary_weight: must be >= 0")
        self.folds = [f.strip() for item in self.folds for f in item.split(",") if f.strip()]
        if self.quick:
            self.variants, self.seeds = list(QUICK_VARIANTS), self.seeds[:1]
        if not self.seeds or not self.variants:
            raise ConfigError("seeds/variants: give at least one of each")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants: {self.variants}: a variant is named twice")
        for v in self.variants:
            try:
                parse_source_variant(v)
            except ConfigError as e:
                raise ConfigError(f"variants: {v!r}: {e}") from None
        if not 32 <= self.size <= 1024:
            raise ConfigError("size: must be between 32 and 1024")
        if min(self.min_films, self.min_test, self.min_group) < 1:
            raise ConfigError("min_films/min_test/min_group: must be >= 1")
        if min(self.stage1_epochs, self.max_epochs, self.batch_size) < 1:
            raise ConfigError("stage1_epochs/max_epochs/batch_size: must be >= 1")
        if self.lr <= 0 or self.stage1_lr <= 0:
            raise ConfigError("lr/stage1_lr: must be positive")


def bench_train_config(
    bench: ShortcutBenchConfig | SourcesBenchConfig,
    *,
    stage: int,
    data: Path | None,
    parent: Path | None,
    folder: Path,
    seed: int,
    epochs: int,
    attention: list[str] | None,
    gain_bn: str,
    **own: object,
) -> TrainConfig:
    """One benchmark run's TrainConfig: the fields both benches map the same way (budget, size,
    Stage II/III learning rate ``bench.lr``, resumable), plus ``own``, each bench's own fields
    (``bench shortcut``: SGD momentum; ``bench sources``: the Stage I lr, sampler, adversary)."""
    return TrainConfig(
        stage=stage,
        data=data,
        backbone=bench.backbone,
        from_run=parent,
        out=folder,
        weights=bench.weights,
        image_size=bench.size,
        max_epochs=epochs,
        patience=epochs,
        batch_size=bench.batch_size,
        finetune_lr=bench.lr,
        l2=bench.l2,
        augment=bench.augment,
        seed=seed,
        device=bench.device,
        resume=True,
        attention=attention or ["gate", "gain"],
        gain_bn=gain_bn,
        rrr_weight=bench.rrr_weight,
        **own,
    )
