"""Run folders: everything needed to rebuild, evaluate and serve one trained classifier.

A run folder holds ``config.yaml`` (the resolved TrainConfig), ``model.yaml`` (how to rebuild
the network: backbone, input size, head, gate, the weights it started from), ``model.pt`` (the
best weights), the engine's ``last.pt``/``best.pt``/``history.csv``, and ``metrics_<split>.json``
once evaluated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from cxrguide.config import from_dict, to_dict
from cxrguide.core.checkpoint import load_checkpoint
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_save, atomic_write_text

MODEL_YAML, MODEL_WEIGHTS = "model.yaml", "model.pt"
LUNG_DIR, LUNG_CONFIG, LUNG_WEIGHTS = "lungs", "config.yaml", "best.pt"


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


def run_identifier(run: str | Path) -> str:
    """``<folder name>@<first 12 hex of model.pt's SHA-256>``: names the exact weights."""
    run = Path(run)
    weights = run / MODEL_WEIGHTS
    if not weights.is_file():
        raise CxrGuideError(f"{run}: no {MODEL_WEIGHTS} (not a finished run)")
    with weights.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return f"{run.resolve().name}@{digest[:12]}"


def bundle_lung_run(run_dir: Path, source: str) -> str:
    """Copy the lung segmenter run ``source`` into ``run_dir/lungs`` (its config and weights
    only, re-saved as plain tensors) and return ``"lungs"``, the value ``model.yaml`` records.

    Why: a run folder is shared whole, and ``model.yaml`` may only point inside itself (see
    :func:`lung_run_path`). ``source`` is returned unchanged when it is not a lung run folder
    (a provenance string whose folder is gone); readers then need ``--lung-model``.
    """

    src = Path(source) if source else None
    ckpt = (
        None
        if src is None
        else next((src / f for f in (LUNG_WEIGHTS, "last.pt") if (src / f).is_file()), None)
    )
    if src is None or ckpt is None or not (src / LUNG_CONFIG).is_file():
        return source
    state = load_checkpoint(ckpt)
    dest = run_dir / LUNG_DIR
    dest.mkdir(parents=True, exist_ok=True)
    weights = {"model": state.get("model", state)}
    atomic_save(lambda fh: torch.save(weights, fh), dest / LUNG_WEIGHTS)
    for name in (LUNG_CONFIG, "metrics.json"):  # metrics: the report's lung section
        if (src / name).is_file():
            atomic_write_text(dest / name, (src / name).read_text(encoding="utf-8"))
    return LUNG_DIR


def lung_run_path(run_dir: str | Path, value: str) -> Path:
    """``model.yaml``'s ``lung_model``, accepted only as a folder inside the run folder.

    A shared run folder must not make us open (and unpickle) files elsewhere: an absolute path,
    a ``..`` or a symlink that leads out is refused, and nothing is looked up in the current
    folder. A lung run outside is used only when the user names it (``--lung-model``).
    """
    where = f"{Path(run_dir) / MODEL_YAML}: lung_model {value!r}"
    path = Path(value)
    root = Path(run_dir).resolve()
    if path.is_absolute() or ".." in path.parts or not (root / path).resolve().is_relative_to(root):
        raise CxrGuideError(
            f"{where} is outside the run folder, and a run folder may only name a lung model "
            "inside itself; pass --lung-model RUN if you trust that run"
        )
    if not (root / path / LUNG_CONFIG).is_file():
        raise CxrGuideError(f"{where} was not found in the run folder; pass --lung-model RUN")
    return root / path
