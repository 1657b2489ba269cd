"""Stage I: a frozen body, the paper's head trained on pooled features cached once.

One model per call, in its own run folder ``OUT/stage1-<backbone>``; which models a stage trains
and the leaderboard over them are :mod:`.dispatch`'s.
"""

from __future__ import annotations

import dataclasses

from cxrguide.config import TrainConfig
from cxrguide.core import engine
from cxrguide.core.device import resolve_device
from cxrguide.core.runs import RunInfo
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.models.zoo import create_model
from cxrguide.training.features import FeatureDataset, pooled_features, stage1_rows
from cxrguide.training.fit_inputs import (
    classifier_task,
    dataset_labels,
    dataset_sources,
    train_loader,
)
from cxrguide.training.stage_run import (
    Scorer,
    claim_run,
    effective_image_size,
    engine_config,
    finish_run,
    sgd,
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
