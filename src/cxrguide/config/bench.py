"""`cxrguide bench ...`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from cxrguide.config.core import _f
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
        from cxrguide.config.training import parse_attention

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
