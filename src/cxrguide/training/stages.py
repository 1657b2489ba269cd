"""Stage I (frozen body, head on cached features) and the stage dispatcher.

``train(cfg, score)`` is what ``cxrguide train`` calls; Stage II and III are the one
fine-tuning path of :mod:`.finetune`. Each model gets its own run folder
``RUNS/stage<k>-<backbone>``; a stage over several models also writes
``RUNS/leaderboard_stage<k>.csv`` sorted by validation accuracy, which the next stage reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from cxrguide.config import TrainConfig
from cxrguide.core import engine
from cxrguide.core.device import resolve_device
from cxrguide.core.runs import RunInfo
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.errors import ConfigError
from cxrguide.files import atomic_open
from cxrguide.models.zoo import create_model
from cxrguide.training.common import (
    LEADERBOARD,
    Scorer,
    backbones,
    claim_run,
    effective_image_size,
    engine_config,
    finish_run,
    sgd,
)
from cxrguide.training.features import FeatureDataset, pooled_features, stage1_rows
from cxrguide.training.finetune import train_finetune
from cxrguide.training.objective import (
    classifier_task,
    dataset_labels,
    dataset_sources,
    train_loader,
)


def stage1(
    cfg: TrainConfig, name: str, prepared: Prepared, score: Scorer, on_epoch_end=None
) -> dict:
    """Frozen body, paper head; on cached pooled features unless ``feature_cache`` is off.

    ``on_epoch_end(epoch, row)`` goes to :func:`engine.fit` (the tuner reports to its pruner).
    """

    run = claim_run(cfg, name)
    model = create_model(
        name,
        cfg.weights,
        head_widths=cfg.head_widths,
        head_dropouts=cfg.head_dropouts,
        head_activation=cfg.activation,
        seed=cfg.seed,
    ).freeze_body()
    size = effective_image_size(cfg, model)
    labels = CxrDataset(prepared, "train").labels
    device = resolve_device(cfg.device)
    ecfg = engine_config(cfg)
    if cfg.feature_cache:
        used = stage1_rows(prepared)  # test is scored by the full model, never from features
        if engine.is_main_process():  # rank 0 fills the cache, the other ranks then read it
            feats = pooled_features(
                model,
                prepared,
                size,
                device,
                rows=used,
                batch_size=cfg.batch_size,
                precision=cfg.precision,
                channels_last=cfg.channels_last,
                workers=cfg.workers,
                progress=cfg.progress,
            )
        engine.barrier()
        if not engine.is_main_process():
            feats = pooled_features(
                model, prepared, size, device, rows=used, precision=cfg.precision, progress=False
            )
        train = FeatureDataset(feats, labels, prepared.rows("train"))
        val = FeatureDataset(feats, labels, prepared.rows("val"))
        net, ecfg = model.head, dataclasses.replace(ecfg, channels_last=False)
    else:
        train = CxrDataset(prepared, "train", image_size=size)
        val = CxrDataset(prepared, "val", image_size=size)
        net = model
    labels_used = dataset_labels(train)
    task = classifier_task(cfg, labels_used, features=cfg.feature_cache)
    engine.fit(
        net,
        task,
        train_loader(cfg, train, labels_used, dataset_sources(cfg, prepared, train)),
        engine.make_loader(
            val, cfg.batch_size, shuffle=False, seed=cfg.seed, num_workers=cfg.workers
        ),
        sgd(net.parameters(), cfg.lr, cfg.momentum),
        ecfg,
        run,
        on_epoch_end=on_epoch_end,
    )
    info = RunInfo(
        name,
        1,
        size,
        list(cfg.head_widths),
        list(cfg.head_dropouts),
        cfg.activation,
        model.weights_source,
        data=str(prepared.root),
    )
    return finish_run(run, cfg, model.cpu(), info, score)


def train(cfg: TrainConfig, score: Scorer) -> list[dict]:
    """Run the configured stage for every selected model; write the stage leaderboard.

    ``score`` evaluates each saved run (see :data:`~cxrguide.training.common.Scorer`).

    Under torchrun every rank calls this; the process group is joined first so that the feature
    cache, run folders and leaderboard are written by rank 0 only.
    """
    engine.init_distributed(resolve_device(cfg.device))
    if cfg.stage == 1:
        if cfg.data is None:
            raise ConfigError("data: give --data PREP (a folder written by 'cxrguide prepare')")
        prepared = Prepared.open(cfg.data)
        rows = [stage1(cfg, name, prepared, score) for name in backbones(cfg)]
    else:
        cfg, rows = train_finetune(cfg, score)
    if engine.is_main_process():
        board = pd.DataFrame(rows).sort_values("val_accuracy", ascending=False, kind="stable")
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        with atomic_open(
            Path(cfg.out) / LEADERBOARD.format(stage=cfg.stage), "w", newline=""
        ) as fh:
            board.to_csv(fh, index=False)
    return rows
