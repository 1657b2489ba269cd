"""`cxrguide audit PREP`: the confounding audit of a prepared set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cxrguide.config.core import _f
from cxrguide.errors import ConfigError


@dataclasses.dataclass
class AuditConfig:
    """Class x source table, confounding warnings, outside-lung probe, per-source statistics."""

    data: Path | None = _f(None, "a folder written by 'cxrguide prepare'", metavar="PREP")
    lungs: Path | None = _f(
        None,
        "lung run ('cxrguide lungs train') whose masks the "
        "outside-lung probe uses (default: PREP's lung cache)",
        metavar="RUN",
    )
    out: Path | None = _f(None, "output folder (default: PREP/audit)", metavar="DIR")
    seed: int = _f(0, "seed of the probe's subset and cross-validation folds")
    probe_side: int = _f(24, "side of the probe's thumbnail of the lung-blanked film")
    probe_margin: float = _f(0.04, "widen the blanked lung box by this share of the side")
    probe_max_images: int = _f(4000, "probe at most this many films (seeded subset)")
    predictions: list[Path] = _f(
        [],
        "a run's predictions_<split>.csv, repeatable: the probe "
        "also predicts the model's answers from outside the lungs",
        metavar="CSV",
    )
    device: str = _f("auto", "--lungs: device for the lung masks (auto | cpu | cuda)")

    def validate(self) -> None:
        if not 4 <= self.probe_side <= 128:
            raise ConfigError("probe_side: must be between 4 and 128")
        if not 0 <= self.probe_margin < 0.5:
            raise ConfigError("probe_margin: must be in [0, 0.5)")
        if self.probe_max_images < 10:
            raise ConfigError("probe_max_images: must be >= 10")
