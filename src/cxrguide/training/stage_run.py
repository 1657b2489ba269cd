"""One run of a classification stage, from claiming its folder to scoring it: ``run_path`` /
``claim_run``, the engine settings and optimiser it trains with, ``finish_run`` (save + score).

Scoring is injected (a :data:`Scorer`): training sits below evaluation, so the caller (the
``train`` command, the pipeline, the tuner's command, an experiment) hands in the function
that evaluates a saved run, normally :func:`cxrguide.evaluation.evaluate.score_split`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cxrguide.config import TrainConfig, save_yaml
from cxrguide.core import engine
from cxrguide.core.run_config import claim_run_config
from cxrguide.core.runs import RunInfo, save_run
from cxrguide.core.tracking import finish_mlflow
from cxrguide.data.datasets import Prepared
from cxrguide.errors import CxrGuideError
from cxrguide.models.classifier import CxrClassifier

SCORED_SPLITS = ("val", "test")
SHORTCUT_SPLIT = "shortcut_test"  # phantoms' markers at another class's place (cxrguide synth)

_log = logging.getLogger(__name__)

Scorer = Callable[[Path, str, TrainConfig], dict[str, Any]]
"""``(run folder, split, config) -> metrics`` with ``accuracy``, ``macro_f1``, ``macro_auc``."""


def engine_config(cfg: TrainConfig) -> engine.EngineConfig:
    return engine.EngineConfig(
        max_epochs=cfg.max_epochs,
        patience=cfg.patience,
        seed=cfg.seed,
        device=cfg.device,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        progress=cfg.progress,
        mlflow=cfg.mlflow,
    )


def run_path(cfg: TrainConfig, name: str) -> Path:
    """``OUT/stage<k>-<name>``: where a stage's run of one model lives (no side effects)."""
    return Path(cfg.out) / f"stage{cfg.stage}-{name}"


def effective_image_size(cfg: TrainConfig, model: CxrClassifier, parent_size: int = 0) -> int:
    """The side a run trains at: ``--image-size``, else its parent run's, else the body's own."""
    return cfg.image_size or parent_size or model.input_size[0]


def claim_run(cfg: TrainConfig, name: str) -> Path:
    """Take :func:`run_path` for this config: refuse an existing run unless ``--resume``, and
    record the config first (a resume must match it)."""
    run = run_path(cfg, name)
    if (run / engine.LAST).exists() and not cfg.resume:
        raise CxrGuideError(
            f"{run}: a run already exists; pass --resume to continue it or choose another --out"
        )
    if engine.is_main_process():
        claim_run_config(run, cfg, resume=cfg.resume, override=cfg.resume_override)
    return run


def sgd(params, lr: float, momentum: float) -> torch.optim.Optimizer:
    """The study's optimiser over the trainable parameters."""
    params = [p for p in params if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def finish_run(
    run: Path, cfg: TrainConfig, model: torch.nn.Module, info: RunInfo, score: Scorer
) -> dict:
    """Save the run and score it on val and test (rank 0 only; other ranks just wait)."""
    if not engine.is_main_process():
        engine.barrier()
        return {"backbone": info.backbone, "run": str(run), "val_accuracy": float("nan")}
    save_yaml(cfg, run / "config.yaml")
    save_run(run, model, info)  # model.yaml last: it marks the run finished
    row = {"backbone": info.backbone, "run": str(run), "weights": info.weights_source}
    for split in SCORED_SPLITS:
        m = score(run, split, cfg)
        row[f"{split}_accuracy"] = m["accuracy"]
        row[f"{split}_macro_f1"] = m["macro_f1"]
        row[f"{split}_macro_auc"] = m["macro_auc"]
    shown = f"val accuracy {row['val_accuracy']:.3f}, test accuracy {row['test_accuracy']:.3f}"
    if info.data and SHORTCUT_SPLIT in set(Prepared.open(info.data).manifest["split"]):  # markers
        m = score(run, SHORTCUT_SPLIT, cfg)
        row[f"{SHORTCUT_SPLIT}_accuracy"] = m["accuracy"]
        shown += f", {SHORTCUT_SPLIT} accuracy {m['accuracy']:.3f}"
    _log.info("%s: %s", run, shown)
    finish_mlflow(run, cfg.mlflow)  # the finished folder (model, metrics) as the run's artefacts
    engine.barrier()
    return row
