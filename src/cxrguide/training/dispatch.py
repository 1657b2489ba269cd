"""The one stage dispatcher: which runs a ``train`` config asks for, and their leaderboard.

``train(cfg, score)`` is what ``cxrguide train`` and the pipeline call. It picks the jobs of
every stage in one place: Stage I trains each ``--backbone`` (:mod:`.stage1`); Stage II and III
fine-tune each run of ``--from`` (a run folder, or the top-k of a leaderboard), and Stage III
without ``--from`` starts from each ``--backbone`` (:mod:`.finetune`). A stage over several
models also writes ``OUT/leaderboard_stage<k>.csv`` sorted by validation accuracy, which the
next stage reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cxrguide.config import TrainConfig
from cxrguide.core import engine
from cxrguide.core.device import resolve_device
from cxrguide.core.runs import read_info
from cxrguide.data.datasets import Prepared
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.files import atomic_open
from cxrguide.models.zoo import get_spec, list_models
from cxrguide.training.finetune import stage2, stage3
from cxrguide.training.stage1 import stage1
from cxrguide.training.stage_run import Scorer

LEADERBOARD = "leaderboard_stage{stage}.csv"

Job = Callable[[TrainConfig, Prepared, Scorer], dict]
"""One run of a stage, all but the prepared set and the scorer already chosen."""


def backbones(cfg: TrainConfig) -> list[str]:
    """The models ``--backbone`` names (``all``: the ten backbones, COVID-Net aside)."""
    if cfg.backbone == "all":
        return [n for n in list_models() if not n.startswith("covidnet")]
    return [get_spec(name.strip()).name for name in cfg.backbone.split(",") if name.strip()]


def parents(cfg: TrainConfig) -> list[Path]:
    """Stage II/III inputs: the top-k runs of a leaderboard CSV, or one run folder."""
    if cfg.from_run is None:
        raise ConfigError("from_run: Stage II/III need --from LEADERBOARD.csv or a run folder")
    src = Path(cfg.from_run)
    if src.is_dir():
        read_info(src)
        return [src]
    if not src.exists():
        raise CxrGuideError(f"{src}: no such leaderboard CSV or run folder")
    board = pd.read_csv(src)
    if "run" not in board.columns or "val_accuracy" not in board.columns:
        raise CxrGuideError(f"{src}: not a leaderboard (needs columns run, val_accuracy)")
    board = board.sort_values("val_accuracy", ascending=False, kind="stable")
    return [Path(r) for r in board["run"].head(cfg.top)]


def jobs(cfg: TrainConfig) -> tuple[TrainConfig, list[Job]]:
    """The runs ``cfg`` asks for, with ``data`` resolved (a fine-tuning ``--from`` without
    ``--data`` trains on the data its parent recorded)."""
    if cfg.stage == 1 or (cfg.stage == 3 and cfg.from_run is None):  # from bodies
        if cfg.data is None:
            raise ConfigError(
                "data: give --data PREP (a folder written by 'cxrguide prepare')"
                if cfg.stage == 1
                else "data: Stage III without --from needs --data PREP"
            )
        job = stage1 if cfg.stage == 1 else _fresh_stage3
        return cfg, [_bind(job, name) for name in backbones(cfg)]
    sources = parents(cfg)  # Stage II always, Stage III with --from
    data = cfg.data or read_info(sources[0]).data
    if not str(data):
        raise ConfigError("data: the parent run does not record its data; give --data PREP")
    job = stage2 if cfg.stage == 2 else stage3
    return dataclasses.replace(cfg, data=Path(data)), [_bind(job, p) for p in sources]


def _fresh_stage3(cfg: TrainConfig, backbone: str, prepared: Prepared, score: Scorer) -> dict:
    return stage3(cfg, None, prepared, score, backbone)


def _bind(job: Callable[..., dict], what: str | Path) -> Job:
    """``job`` for one backbone name or parent run."""
    return lambda cfg, prepared, score: job(cfg, what, prepared, score)


def train(cfg: TrainConfig, score: Scorer) -> list[dict]:
    """Run the configured stage for every selected model; write the stage leaderboard.

    ``score`` evaluates each saved run (see :data:`~cxrguide.training.stage_run.Scorer`).

    Under torchrun every rank calls this; the process group is joined first so that the feature
    cache, run folders and leaderboard are written by rank 0 only.
    """
    engine.init_distributed(resolve_device(cfg.device))
    cfg, todo = jobs(cfg)
    prepared = Prepared.open(cfg.data)
    rows = [job(cfg, prepared, score) for job in todo]
    if engine.is_main_process():
        board = pd.DataFrame(rows).sort_values("val_accuracy", ascending=False, kind="stable")
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        with atomic_open(
            Path(cfg.out) / LEADERBOARD.format(stage=cfg.stage), "w", newline=""
        ) as fh:
            board.to_csv(fh, index=False)
    return rows
