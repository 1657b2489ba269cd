"""`cxrguide pipeline`: the whole chain from one YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from cxrguide.config.core import _f

# ---- the whole chain (`cxrguide pipeline`) ----------------------------------------------------


@dataclasses.dataclass
class ExplainOptions:
    """The pipeline's ``explain:`` section (Grad-CAM galleries and the stage comparison)."""

    per_group: int = _f(2, "images per gallery group")
    per_class: int = _f(1, "images per class in the stage comparison")
    method: Literal["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"] = _f(
        "gradcam", "CAM method"
    )


@dataclasses.dataclass
class ReportOptions:
    """The pipeline's ``report:`` section (keyword options of the HTML report)."""

    shortcut: str | None = _f(None, "shortcut benchmark folder or table to include")
    sources: str | None = _f(None, "'bench sources' study folder to include (cross-source study)")
    split: str = _f("test", "split the report's metrics come from")
    method: str = _f("gradcam", "CAM method of the galleries")
    gallery_per_group: int = _f(1, "images per gallery group")
    device: str = _f("cpu", "device for the report's figures")
    title: str = _f("cxrguide report", "page title")


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
        [],
        "real data KIND=PATH or folder/table[:NAME]=PATH (empty: synthetic phantoms)",
        metavar="KIND=PATH",
    )
    label_map: Path | dict[str, Any] | None = _f(
        None,
        "folder/table sources: source label -> class, a YAML file or a mapping (docs/sources.md)",
        metavar="FILE.yaml",
    )
    lung_sources: list[str] = _f(
        [], "lung data v7=PATH / masks=PATH (empty: the phantoms' exact masks)", metavar="KIND=PATH"
    )
    synth: dict[str, Any] = _f({}, "SynthConfig fields for the synthetic data")
    prepare: dict[str, Any] = _f({}, "PrepareConfig fields")
    lungs_prepare: dict[str, Any] = _f({}, "LungsPrepareConfig fields")
    lungs: dict[str, Any] = _f({}, "LungsTrainConfig fields for the U-Net")
    audit: dict[str, Any] = _f({}, "AuditConfig fields (seed, probe_*) of the data audit")
    stage1: dict[str, Any] = _f({}, "TrainConfig fields for Stage I")
    tune: dict[str, Any] = _f({}, "TuneConfig fields; trials: 0 skips tuning")
    stage2: dict[str, Any] = _f({}, "TrainConfig fields for Stage II")
    stage3: dict[str, Any] = _f({}, "TrainConfig fields for Stage III")
    explain: dict[str, Any] = _f({}, "options of the Grad-CAM figures")
    report: dict[str, Any] = _f({}, "options of the HTML report")
