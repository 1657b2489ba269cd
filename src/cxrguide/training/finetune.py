"""Stage II and III: the one fine-tuning path (Stage II is Stage III with no attention).

Stage III adds guided attention (lung gate, GAIN attention mining, lung-mask supervision).
``--adversary source`` adds a source classifier behind gradient reversal to either
(:mod:`cxrguide.training.adversary`).

``cxrguide train --stage 3 --from RUN|LEADERBOARD --attention gate,gain[,external]`` fine-tunes
Stage II runs (the study's order) with the mechanisms switched on; without ``--from`` it starts
from ``--backbone`` with ``--weights`` (ImageNet or random), which ablations and the shortcut
benchmark use. Run folders are ``RUNS/stage3-<backbone>`` like the other stages; which runs a
config asks for is :mod:`.dispatch`'s.

The lung masks come from the prepared set's lung cache (``cxrguide lungs predict``). The lung
run that made them is recorded in ``model.yaml`` (``lung_model``), taken from ``--lung-model``
or else from the cache's provenance JSON, so ``predict`` can segment a new image first.

:func:`fine_tune` is the one fine-tuning path: with attention settings it is Stage III,
without them plain Stage II (the shortcut benchmark trains both through it, so they differ only
in the attention terms).

Early stopping watches the validation *objective* (L_clas + alpha L_am + w_e L_e, true-class
Grad-CAM, no second-order graph at eval): the quantity being optimised; the plain
cross-entropy is logged beside it as ``val_ce``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from cxrguide.attention.gain import GainSettings, GuidedAttention, parse_attention
from cxrguide.config import TrainConfig
from cxrguide.core import engine
from cxrguide.core.runs import RunInfo, bundle_lung_run
from cxrguide.data.augment import CxrAugment
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.models.classifier import CxrClassifier
from cxrguide.models.saved import load_run
from cxrguide.models.zoo import create_model
from cxrguide.training.fit_inputs import (
    class_weights,
    classifier_task,
    dataset_labels,
    dataset_sources,
    train_loader,
    with_adversary,
)
from cxrguide.training.fit_tasks import Stage3Task
from cxrguide.training.stage_run import (
    Scorer,
    claim_run,
    effective_image_size,
    engine_config,
    finish_run,
    sgd,
)

_log = logging.getLogger(__name__)


def settings_from(cfg: TrainConfig) -> GainSettings:
    return GainSettings.from_names(
        cfg.attention,
        alpha=cfg.gain_alpha,
        sigma=cfg.gain_sigma,
        omega=cfg.gain_omega,
        external_weight=cfg.external_weight,
        second_order=cfg.gain_second_order,
        erased_bn=cfg.gain_bn,
        rrr_weight=cfg.rrr_weight,
        dilation=cfg.lung_dilation,
    )


def lung_model_of(cfg: TrainConfig, prepared: Prepared) -> str:
    """The lung run behind the mask cache: ``--lung-model``, else the cache's provenance."""
    if cfg.lung_model is not None:
        path = Path(cfg.lung_model)
        if not path.exists():
            raise CxrGuideError(f"{path}: lung model run not found (--lung-model)")
        return str(path.resolve())
    record = prepared.lung_cache_path.with_suffix(".json")
    if record.is_file():
        try:
            return str(json.loads(record.read_text()).get("run", ""))
        except (OSError, ValueError):
            return ""
    return ""


def check_lungs(prepared: Prepared) -> None:
    """Fail early, with the command to run, when the prepared set has no lung masks."""
    if not prepared.lung_cache_path.exists():
        raise CxrGuideError(
            f"{prepared.lung_cache_path}: Stage III needs lung masks for this prepared set; run "
            f"'cxrguide lungs predict LUNG_RUN --data {prepared.root}' first"
        )
    lungs = prepared.lungs()
    if len(lungs) != len(prepared.manifest):
        raise CxrGuideError(
            f"{prepared.lung_cache_path}: {len(lungs)} masks but the manifest has "
            f"{len(prepared.manifest)} rows; rerun 'cxrguide lungs predict'"
        )


def rows_with_lungs(prepared: Prepared, split: str, why: str) -> np.ndarray:
    """The rows of ``split`` whose lung mask is not empty; the others are skipped, counted.

    Under a mode that blanks or gates on the mask (``why``), an empty mask would leave nothing
    to classify, so such an image is never trained or scored on an all-zero mask.
    """
    rows = prepared.rows(split)
    lungs = prepared.lungs()
    present = np.array([bool(np.asarray(lungs[r]).any()) for r in rows], dtype=bool)
    if not present.any():
        raise CxrGuideError(
            f"{prepared.lung_cache_path}: every {split} image has an empty lung mask, and "
            f"{why} needs lungs; check 'cxrguide lungs predict' (its quality flags)"
        )
    if not present.all():
        _log.info(
            "%s: skipped %d of %d %s images (empty lung mask)",
            why,
            int((~present).sum()),
            len(rows),
            split,
        )
    return rows[present]


def _start(
    cfg: TrainConfig, parent: Path | None, backbone: str | None
) -> tuple[CxrClassifier, RunInfo]:
    """The network to fine-tune: a parent run, or a fresh ``backbone`` with ``cfg.weights``."""

    if parent is not None:
        model, info = load_run(parent)
        return model, dataclasses.replace(info, parent=str(parent))
    if backbone is None:
        raise ConfigError("backbone: Stage III without --from needs --backbone NAME")
    model = create_model(
        backbone,
        cfg.weights,
        head_widths=cfg.head_widths,
        head_dropouts=cfg.head_dropouts,
        head_activation=cfg.activation,
        seed=cfg.seed,
    )
    info = RunInfo(
        model.name,
        3,
        0,
        list(cfg.head_widths),
        list(cfg.head_dropouts),
        cfg.activation,
        model.weights_source,
    )
    return model, info


def fine_tune(
    cfg: TrainConfig,
    model: CxrClassifier,
    info: RunInfo,
    prepared: Prepared,
    settings: GainSettings | None,
    score: Scorer,
    *,
    optimizer: str = "sgd",
    on_epoch_end=None,
) -> dict:
    """Fine-tune body and head; ``settings`` None is plain Stage II, else Stage III.

    One code path for both, so a benchmark's Stage II and Stage III runs differ only in the
    attention terms. ``optimizer``: ``"sgd"`` (the study's, ``cfg.momentum``) or ``"adam"``
    (the shortcut benchmark's: from random weights SGD does not learn in a CPU-sized budget).
    ``on_epoch_end(epoch, row)`` goes to :func:`engine.fit` (the tuner reports to its pruner).
    """
    names = parse_attention(cfg.attention) if settings is not None else []
    lungs = settings is not None and settings.needs_lungs
    if lungs:
        check_lungs(prepared)
    model.unfreeze_body().train()
    if info.parent:  # the body starts from the parent's weights, whatever --weights says
        cfg = dataclasses.replace(cfg, weights=str(Path(info.parent) / "model.pt"))
    run = claim_run(cfg, info.backbone)
    size = effective_image_size(cfg, model, info.image_size)
    augment = CxrAugment(hflip=cfg.hflip) if cfg.augment else None
    strict = settings is not None and settings.strict_lungs
    why = f"--attention {','.join(names)}"
    train = CxrDataset(
        prepared,
        rows=rows_with_lungs(prepared, "train", why) if strict else prepared.rows("train"),
        image_size=size,
        augment=augment,
        with_lungs=lungs,
    )
    val = CxrDataset(
        prepared,
        rows=rows_with_lungs(prepared, "val", why) if strict else prepared.rows("val"),
        image_size=size,
        with_lungs=lungs,
    )
    labels = dataset_labels(train)
    if settings is None:
        net, task = model, classifier_task(cfg, labels)
    else:
        net = GuidedAttention(model, settings)
        task = Stage3Task(settings, cfg.l2, cfg.l2_scope, class_weights(cfg, labels))
    loader = train_loader(cfg, train, labels, dataset_sources(cfg, prepared, train))
    net, task = with_adversary(cfg, prepared, train, model, net, task, cfg.max_epochs * len(loader))
    if optimizer == "sgd":
        opt = sgd(net.parameters(), cfg.finetune_lr, cfg.momentum)
    elif optimizer == "adam":
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], cfg.finetune_lr)
    else:
        raise ConfigError(f"optimizer: {optimizer!r} is not one of sgd, adam")
    engine.fit(
        net,
        task,
        loader,
        engine.make_loader(
            val, cfg.batch_size, shuffle=False, seed=cfg.seed, num_workers=cfg.workers
        ),
        opt,
        engine_config(cfg),
        run,
        on_epoch_end=on_epoch_end,
    )
    new = dataclasses.replace(
        info,
        stage=2 if settings is None else 3,
        image_size=size,
        data=str(prepared.root),
        lung_gate=settings is not None and bool(settings.lung_inputs),
        lung_model=bundle_lung_run(run, lung_model_of(cfg, prepared)) if lungs else "",
        attention=names,
        lung_inputs=list(settings.lung_inputs) if settings is not None else [],
        lung_dilation=settings.dilation if strict else 0.0,
    )
    return finish_run(
        run, dataclasses.replace(cfg, attention=names or cfg.attention), model.cpu(), new, score
    )


def stage2(
    cfg: TrainConfig, parent: Path, prepared: Prepared, score: Scorer, on_epoch_end=None
) -> dict:
    """Fine-tune body and head of a Stage I run, with CXR-safe augmentation (no attention)."""
    model, info = _start(cfg, parent, None)
    return fine_tune(cfg, model, info, prepared, None, score, on_epoch_end=on_epoch_end)


def stage3(
    cfg: TrainConfig,
    parent: Path | None,
    prepared: Prepared,
    score: Scorer,
    backbone: str | None = None,
) -> dict:
    """Fine-tune ``parent`` (or a fresh ``backbone`` when ``parent`` is None) with attention."""
    settings = settings_from(dataclasses.replace(cfg, attention=parse_attention(cfg.attention)))
    if settings.needs_lungs:
        check_lungs(prepared)  # before loading anything
    model, info = _start(cfg, parent, backbone)
    if (
        parent is None
        and model.weights_source == "random"
        and settings.gain
        and settings.erased_bn == "frozen"
    ):
        _log.info(
            "Stage III from a random body: BatchNorm has no trained statistics to freeze; "
            "GAIN uses --gain-bn clean"
        )
        cfg = dataclasses.replace(cfg, gain_bn="clean")  # recorded in the run's config.yaml
        settings = dataclasses.replace(settings, erased_bn="clean")
    return fine_tune(cfg, model, info, prepared, settings, score)
