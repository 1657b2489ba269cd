"""`cxrguide pretrain`: a body trained on clean phantoms, the offline stand-in for ImageNet."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cxrguide.config.core import _f, mlflow_field
from cxrguide.errors import ConfigError

# The default recipe is what ``--weights phantom`` builds on first use: small enough to build in
# a few CPU minutes, good enough (>= 90% on held-out clean phantoms) to stand in for ImageNet.


@dataclasses.dataclass
class PretrainConfig:
    """`cxrguide pretrain`: train a backbone on clean synthetic phantoms (no markers)."""

    backbone: str = _f("mobilenet_v2", "model name (see 'cxrguide models')")
    out: Path | None = _f(
        None,
        "folder for the body and its card (default: the weight cache that --weights "
        "phantom reads: $CXRGUIDE_WEIGHTS_DIR, else ~/.cache/cxrguide/weights)",
        metavar="DIR",
    )
    n: int = _f(
        3600, "clean phantoms drawn (4 in 5 for training, 1 in 5 held out, split by patient)"
    )
    size: int = _f(64, "phantom side and training input in px")
    epochs: int = _f(
        8, "training epochs (AdamW, one-cycle learning rate); many fresh films beat many epochs"
    )
    lr: float = _f(5e-3, "peak learning rate of the one-cycle schedule")
    batch_size: int = _f(32, "batch size")
    lesion_weight: float = _f(
        1.0,
        "weight of the auxiliary loss: which cells of the stride-8 feature map hold a finding "
        "(the phantoms' exact lesion masks); 0 trains on class labels alone",
    )
    seed: int = _f(1001, "seed of the phantoms and the training (not a data seed of the study)")
    threads: int = _f(0, "torch CPU threads (0: torch's default)")
    workers: int = _f(0, "processes drawing the phantoms (0: all cores)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    mlflow: str | None = mlflow_field()

    def validate(self) -> None:
        if self.n < 30:
            raise ConfigError("n: need at least 30 phantoms")
        if not 32 <= self.size <= 512:
            raise ConfigError("size: must be between 32 and 512")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.lesion_weight < 0:
            raise ConfigError("epochs/batch_size/lr: must be positive")
