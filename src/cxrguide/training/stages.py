"""Stage I (frozen body, head on cached features) and Stage II (fine-tuning the best k).

``train(cfg)`` is what ``cxrguide train`` calls. Each model gets its own run folder
``RUNS/stage<k>-<backbone>``; a stage over several models also writes
``RUNS/leaderboard_stage<k>.csv`` sorted by validation accuracy, which the next stage reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import torch

from cxrguide.config import TrainConfig, save_yaml
from cxrguide.data.datasets import CxrAugment, CxrDataset, Prepared
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.evaluation.evaluate import evaluate_run
from cxrguide.models.classifier import CxrClassifier
from cxrguide.training import engine
from cxrguide.training.features import FeatureDataset, pooled_features
from cxrguide.training.objective import classifier_task, dataset_labels, train_loader
from cxrguide.training.runs import RunInfo, load_run, read_info, save_run

LEADERBOARD = "leaderboard_stage{stage}.csv"
SHORTCUT_SPLIT = "shortcut_test"  # phantoms' markers at another class's place (cxrguide synth)


def engine_config(cfg: TrainConfig) -> engine.EngineConfig:
    return engine.EngineConfig(
        max_epochs=cfg.max_epochs, patience=cfg.patience, seed=cfg.seed, device=cfg.device,
        precision=cfg.precision, channels_last=cfg.channels_last,
    )  # fmt: skip


def backbones(cfg: TrainConfig) -> list[str]:
    from cxrguide.models.zoo import get_spec, list_models

    if cfg.backbone == "all":
        return [n for n in list_models() if not n.startswith("covidnet")]
    return [get_spec(name.strip()).name for name in cfg.backbone.split(",") if name.strip()]


def _run_dir(cfg: TrainConfig, name: str) -> Path:
    run = Path(cfg.out) / f"stage{cfg.stage}-{name}"
    if (run / engine.LAST).exists() and not cfg.resume:
        raise CxrGuideError(
            f"{run}: a run already exists; pass --resume to continue it or choose another --out"
        )
    return run


def _optimizer(params, lr: float, momentum: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def _finish(run: Path, cfg: TrainConfig, model: CxrClassifier, info: RunInfo) -> dict:
    """Save the run and evaluate it on val and test (rank 0 only; other ranks just wait)."""
    if not engine.is_main_process():
        engine.barrier()
        return {"backbone": info.backbone, "run": str(run), "val_accuracy": float("nan")}
    save_run(run, model, info)
    save_yaml(cfg, run / "config.yaml")
    row = {"backbone": info.backbone, "run": str(run), "weights": info.weights_source}
    for split in ("val", "test"):
        m = evaluate_run(run, split, cfg.data, device=cfg.device, n_boot=200, progress=False)
        row[f"{split}_accuracy"] = m["accuracy"]
        row[f"{split}_macro_f1"] = m["macro_f1"]
        row[f"{split}_macro_auc"] = m["macro_auc"]
    shown = f"val accuracy {row['val_accuracy']:.3f}, test accuracy {row['test_accuracy']:.3f}"
    if info.data and SHORTCUT_SPLIT in set(Prepared.open(info.data).manifest["split"]):  # markers
        m = evaluate_run(run, SHORTCUT_SPLIT, cfg.data, device=cfg.device, n_boot=200,
                         progress=False)  # fmt: skip
        row[f"{SHORTCUT_SPLIT}_accuracy"] = m["accuracy"]
        shown += f", {SHORTCUT_SPLIT} accuracy {m['accuracy']:.3f}"
    print(f"{run}: {shown}")
    engine.barrier()
    return row


def stage1(cfg: TrainConfig, name: str, prepared: Prepared, on_epoch_end=None) -> dict:
    """Frozen body, paper head; on cached pooled features unless ``feature_cache`` is off.

    ``on_epoch_end(epoch, row)`` goes to :func:`engine.fit` (the tuner reports to its pruner).
    """
    from cxrguide.models.zoo import create_model

    run = _run_dir(cfg, name)
    model = create_model(name, cfg.weights, head_widths=cfg.head_widths,
                         head_dropouts=cfg.head_dropouts, head_activation=cfg.activation,
                         seed=cfg.seed).freeze_body()  # fmt: skip
    size = cfg.image_size or model.input_size[0]
    labels = CxrDataset(prepared, "train").labels
    device = engine.resolve_device(cfg.device)
    ecfg = engine_config(cfg)
    if cfg.feature_cache:
        if engine.is_main_process():  # rank 0 fills the cache, the other ranks then read it
            feats = pooled_features(model, prepared, size, device, batch_size=cfg.batch_size,
                                    precision=cfg.precision, channels_last=cfg.channels_last)  # fmt: skip
        engine.barrier()
        if not engine.is_main_process():
            feats = pooled_features(model, prepared, size, device, precision=cfg.precision,
                                    progress=False)  # fmt: skip
        train = FeatureDataset(feats, labels, prepared.rows("train"))
        val = FeatureDataset(feats, labels, prepared.rows("val"))
        net, ecfg = model.head, dataclasses.replace(ecfg, channels_last=False)
    else:
        train = CxrDataset(prepared, "train", image_size=size)
        val = CxrDataset(prepared, "val", image_size=size)
        net = model
    task = classifier_task(cfg, dataset_labels(train), features=cfg.feature_cache)
    engine.fit(
        net, task, train_loader(cfg, train, dataset_labels(train)),
        engine.make_loader(val, cfg.batch_size, shuffle=False, seed=cfg.seed, num_workers=cfg.workers),
        _optimizer(net.parameters(), cfg.lr, cfg.momentum), ecfg, run, on_epoch_end=on_epoch_end,
    )  # fmt: skip
    info = RunInfo(name, 1, size, list(cfg.head_widths), list(cfg.head_dropouts), cfg.activation,
                   model.weights_source, data=str(prepared.root))  # fmt: skip
    return _finish(run, cfg, model.cpu(), info)


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


def stage2(cfg: TrainConfig, parent: Path, prepared: Prepared, on_epoch_end=None) -> dict:
    """Fine-tune body and head of a Stage I run, with CXR-safe augmentation (``on_epoch_end``:
    as in :func:`stage1`)."""
    model, info = load_run(parent)
    model.unfreeze_body()
    run = _run_dir(cfg, info.backbone)
    size = cfg.image_size or info.image_size
    augment = CxrAugment(hflip=cfg.hflip) if cfg.augment else None
    train = CxrDataset(prepared, "train", image_size=size, augment=augment)
    val = CxrDataset(prepared, "val", image_size=size)
    labels = dataset_labels(train)
    engine.fit(
        model, classifier_task(cfg, labels), train_loader(cfg, train, labels),
        engine.make_loader(val, cfg.batch_size, shuffle=False, seed=cfg.seed, num_workers=cfg.workers),
        _optimizer(model.parameters(), cfg.finetune_lr, cfg.momentum), engine_config(cfg), run,
        on_epoch_end=on_epoch_end,
    )  # fmt: skip
    new = dataclasses.replace(info, stage=2, image_size=size, data=str(prepared.root),
                              parent=str(parent))  # fmt: skip
    return _finish(run, cfg, model.cpu(), new)


def train(cfg: TrainConfig) -> list[dict]:
    """Run the configured stage for every selected model; write the stage leaderboard.

    Under torchrun every rank calls this; the process group is joined first so that the feature
    cache, run folders and leaderboard are written by rank 0 only.
    """
    engine.init_distributed(engine.resolve_device(cfg.device))
    if cfg.stage == 1:
        if cfg.data is None:
            raise ConfigError("data: give --data PREP (a folder written by 'cxrguide prepare')")
        prepared = Prepared.open(cfg.data)
        rows = [stage1(cfg, name, prepared) for name in backbones(cfg)]
    elif cfg.stage == 3:
        from cxrguide.training.stage3 import train_stage3

        cfg, rows = train_stage3(cfg)
    else:
        sources = parents(cfg)
        data = cfg.data or read_info(sources[0]).data
        prepared = Prepared.open(data)
        cfg = dataclasses.replace(cfg, data=Path(data))
        rows = [stage2(cfg, parent, prepared) for parent in sources]
    if engine.is_main_process():
        board = pd.DataFrame(rows).sort_values("val_accuracy", ascending=False, kind="stable")
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        board.to_csv(Path(cfg.out) / LEADERBOARD.format(stage=cfg.stage), index=False)
    return rows
