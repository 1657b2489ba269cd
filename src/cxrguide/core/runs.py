"""Run folders: everything needed to rebuild, evaluate and serve one trained classifier.

A run folder holds ``config.yaml`` (the resolved TrainConfig), ``model.yaml`` (how to rebuild
the network: backbone, input size, head, gate, the weights it started from), ``model.pt`` (the
best weights), the engine's ``last.pt``/``best.pt``/``history.csv``, and ``metrics_<split>.json``
once evaluated.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from cxrguide.config import from_dict, to_dict
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_save, atomic_write_text

MODEL_YAML, MODEL_WEIGHTS = "model.yaml", "model.pt"


@dataclass
class RunInfo:
    backbone: str
    stage: int
    image_size: int
    head_widths: list[int]
    head_dropouts: list[float]
    activation: str
    weights_source: str  # what the body started from: "random", "imagenet:...", "file:..."
    data: str = ""  # the prepared folder it was trained on
    parent: str = ""  # the run it was fine-tuned from
    lung_gate: bool = False  # the network takes lung masks at inference (predict/serve/export)
    lung_model: str = ""  # Stage III: the lung segmenter run used for the gate
    attention: list[str] = field(default_factory=list)
    # where the mask enters when lung_gate (models.classifier.LUNG_INPUTS): "input", "early",
    # "last"; empty = ["last"], the study's gate (runs made before these modes existed)
    lung_inputs: list[str] = field(default_factory=list)
    lung_dilation: float = 0.0  # share of the side the mask grows by for "input" / "early"

    @property
    def mask_inputs(self) -> list[str]:
        """Where this run's network applies lung masks ([] when it takes none)."""
        return (self.lung_inputs or ["last"]) if self.lung_gate else []

    @property
    def strict_lungs(self) -> bool:
        """True when an empty lung mask would blank the whole film or its early features:
        such images are skipped with a reason rather than classified from nothing."""
        return bool({"input", "early"} & set(self.mask_inputs))


def save_run(run_dir: Path, model: torch.nn.Module, info: RunInfo) -> None:
    """Atomically, weights first: ``model.yaml`` (what readers check) appears only when both
    files are whole."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(lambda fh: torch.save(model.state_dict(), fh), run_dir / MODEL_WEIGHTS)
    atomic_write_text(run_dir / MODEL_YAML, yaml.safe_dump(to_dict(info), sort_keys=False))


def read_info(run_dir: str | Path) -> RunInfo:
    path = Path(run_dir) / MODEL_YAML
    if not path.exists():
        raise CxrGuideError(f"{run_dir}: not a trained run (no {MODEL_YAML}; train it first)")
    return from_dict(RunInfo, yaml.safe_load(path.read_text()), str(path))


def with_changes(info: RunInfo, **changes) -> RunInfo:
    return dataclasses.replace(info, **changes)


def run_identifier(run: str | Path) -> str:
    """``<folder name>@<first 12 hex of model.pt's SHA-256>``: names the exact weights."""
    run = Path(run)
    weights = run / MODEL_WEIGHTS
    if not weights.is_file():
        raise CxrGuideError(f"{run}: no {MODEL_WEIGHTS} (not a finished run)")
    with weights.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return f"{run.resolve().name}@{digest[:12]}"
