"""Run folders: everything needed to rebuild, evaluate and serve one trained classifier.

A run folder holds ``config.yaml`` (the resolved TrainConfig), ``model.yaml`` (how to rebuild
the network: backbone, input size, head, gate, the weights it started from), ``model.pt`` (the
best weights), the engine's ``last.pt``/``best.pt``/``history.csv``, and ``metrics_<split>.json``
once evaluated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from cxrguide.config import from_dict, to_dict
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_save, atomic_write_text
from cxrguide.models.classifier import CxrClassifier

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
    lung_gate: bool = False
    lung_model: str = ""  # Stage III: the lung segmenter run used for the gate
    attention: list[str] = field(default_factory=list)


def save_run(run_dir: Path, model: CxrClassifier, info: RunInfo) -> None:
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


def load_run(
    run_dir: str | Path, device: torch.device | str = "cpu"
) -> tuple[CxrClassifier, RunInfo]:
    """Rebuild the network of a run and load its best weights (no download needed)."""
    from cxrguide.models.zoo import create_model

    info = read_info(run_dir)
    model = create_model(
        info.backbone,
        "none",
        head_widths=info.head_widths,
        head_dropouts=info.head_dropouts,
        head_activation=info.activation,
    )
    state = torch.load(Path(run_dir) / MODEL_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.weights_source = f"run:{run_dir} (started from {info.weights_source})"
    return model.to(device).eval(), info


def with_changes(info: RunInfo, **changes) -> RunInfo:
    return dataclasses.replace(info, **changes)
