"""Rebuild the classifier saved in a run folder (its format: :mod:`cxrguide.core.runs`)."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrguide.core.checkpoint import load_checkpoint
from cxrguide.core.runs import MODEL_WEIGHTS, RunInfo, read_info
from cxrguide.models.classifier import CxrClassifier
from cxrguide.models.zoo import create_model


def load_run(
    run_dir: str | Path, device: torch.device | str = "cpu"
) -> tuple[CxrClassifier, RunInfo]:
    """Rebuild the network of a run and load its best weights (no download needed)."""
    info = read_info(run_dir)
    model = create_model(
        info.backbone,
        "none",
        head_widths=info.head_widths,
        head_dropouts=info.head_dropouts,
        head_activation=info.activation,
    )
    state = load_checkpoint(Path(run_dir) / MODEL_WEIGHTS)  # weights_only: never runs code
    model.load_state_dict(state)
    if info.lung_gate:
        model.set_lung_inputs(info.mask_inputs, info.lung_dilation)
    model.weights_source = f"run:{run_dir} (started from {info.weights_source})"
    return model.to(device).eval(), info
