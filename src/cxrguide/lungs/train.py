"""`cxrguide lungs train` and `lungs evaluate`: the U-Net on a `lungs prepare` folder.

Training goes through the shared engine (checkpoint / resume / early stopping on val loss /
history.csv); the training set augments each item (image and mask together, the one augmenter
of :mod:`cxrguide.data.augment`) and the task's eval step reports the loss and the thresholded
Dice. Resizing follows the one rule of :mod:`cxrguide.data.transforms`. A run folder describes
itself:
``config.yaml`` (the resolved training config, absolute data path), ``best.pt`` / ``last.pt``,
``history.csv``, and after training ``metrics.json`` + ``per_image.csv`` on val and test.
Metrics are computed on post-processed masks, the ones ``lungs predict`` hands to Stage III.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrguide.config import (
    LungsEvaluateConfig,
    LungsTrainConfig,
    load_yaml,
    save_yaml,
    to_dict,
)
from cxrguide.core import engine
from cxrguide.core.device import resolve_device
from cxrguide.core.run_config import changed_fields, config_defaults
from cxrguide.core.tracking import finish_mlflow
from cxrguide.data import cache
from cxrguide.data.augment import CxrAugment
from cxrguide.data.completion import require_complete
from cxrguide.data.transforms import resize_image, resize_mask
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.files import atomic_write_json
from cxrguide.lungs.metrics import content_fraction, segmentation_metrics, summarize
from cxrguide.lungs.records import lung_cache_path
from cxrguide.lungs.segmenter import (
    RUN_CONFIG,
    build_segmenter,
    finish_mask,
    inference_batch,
    load_lung_run,
    predict_batch,
)
from cxrguide.lungs.unet import DiceBCELoss, LungSegmenter

METRICS, PER_IMAGE = "metrics.json", "per_image.csv"


def read_lung_set(prepared: str | Path) -> tuple[list[dict[str, str]], int]:
    """Manifest rows and cache size of a folder written by ``lungs prepare``."""
    prepared = Path(prepared)
    manifest, config = prepared / "manifest.csv", prepared / "prepare_config.yaml"
    require_complete(prepared, "lungs prepare")
    if not manifest.is_file() or not config.is_file():
        raise CxrGuideError(f"{prepared}: not a folder written by 'cxrguide lungs prepare'")
    size = int(load_yaml(config).get("size", 0))
    for path in (cache.image_cache_path(prepared, size), lung_cache_path(prepared, size)):
        if not path.is_file():
            raise CxrGuideError(f"{path}: missing (rerun 'cxrguide lungs prepare')")
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if "lung_fraction" not in (rows[0] if rows else {"lung_fraction": ""}):
        raise CxrGuideError(f"{manifest}: has no lung masks (is it a classifier folder?)")
    return rows, size


class LungsDataset(Dataset):
    """(image float (1, S, S) in [0, 1], mask float (1, S, S) in {0, 1}) of one split,
    augmented per item when given an augmenter (the training split)."""

    def __init__(
        self, prepared: str | Path, split: str, size: int = 0, augment: CxrAugment | None = None
    ) -> None:
        rows, cache_size = read_lung_set(prepared)
        self.rows = [r for r in rows if r["split"] == split]
        self.index = [int(r["cache_index"]) for r in self.rows]
        self.images = cache.open_readonly(cache.image_cache_path(prepared, cache_size))
        self.masks = cache.open_readonly(lung_cache_path(prepared, cache_size))
        self.size = size or cache_size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.index[i]
        img = torch.from_numpy(np.asarray(self.images[k], dtype=np.float32) / 255.0)[None]
        mask = torch.from_numpy(np.asarray(self.masks[k] > 127, dtype=np.float32))[None]
        img, mask = resize_image(img, self.size), resize_mask(mask, self.size)
        if self.augment is not None:
            img, mask = self.augment(img, mask)
        return img, mask  # type: ignore[return-value]


class LungTask:
    """Dice + BCE; the eval step adds the hard Dice."""

    def __init__(self, loss: DiceBCELoss, threshold: float) -> None:
        self.loss, self.threshold = loss, threshold

    def train_step(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        loss = self.loss(model(x), y)
        return loss, {"loss": loss.item() * len(x), "n": len(x)}

    def eval_step(self, model, batch) -> dict[str, float]:
        x, y = batch
        logits = model(x)
        pred = (torch.sigmoid(logits.float()) >= self.threshold).float()
        inter = (pred * y).flatten(1).sum(1)
        total = pred.flatten(1).sum(1) + y.flatten(1).sum(1)
        dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
        return {
            "loss": self.loss(logits, y).item() * len(x),
            "dice": dice.sum().item(),
            "n": len(x),
        }


@dataclass
class LungsTrainResult:
    run: Path
    fit: engine.FitResult
    metrics: dict[str, Any]


def _check_run_dir(run: Path, cfg: LungsTrainConfig) -> None:
    saved_file = run / RUN_CONFIG
    if not saved_file.exists():
        if run.exists() and any(run.iterdir()):
            raise CxrGuideError(f"{run}: folder is not empty and holds no lungs run")
        return
    # the classifier runs' rule: runtime fields may change, a field added since counts as default
    diff = changed_fields(load_yaml(saved_file), to_dict(cfg), config_defaults(cfg))
    if diff:
        raise CxrGuideError(
            f"{saved_file}: this run was started with a different config "
            f"({', '.join(sorted(diff))}); "
            "use another --out"
        )


def train_lungs(cfg: LungsTrainConfig) -> LungsTrainResult:
    """Train (or resume) a lung U-Net, then evaluate it on val and test."""
    if cfg.data is None or cfg.out is None:
        raise ConfigError("data/out: give --data DIR (from 'lungs prepare') and --out RUN")
    _, cache_size = read_lung_set(cfg.data)
    cfg = replace(cfg, data=Path(cfg.data).resolve(), size=cfg.size or cache_size)
    cfg.validate()  # the resolved size must suit the architecture too
    run = Path(cfg.out)
    _check_run_dir(run, cfg)
    run.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run / RUN_CONFIG)

    augment = (
        CxrAugment(cfg.rotate, cfg.shift, cfg.zoom, cfg.brightness, cfg.contrast, cfg.hflip)
        if cfg.augment
        else None
    )
    train_set = LungsDataset(cfg.data, "train", cfg.size, augment)
    val_set = LungsDataset(cfg.data, "val", cfg.size)
    if not len(train_set) or not len(val_set):
        raise CxrGuideError(
            f"{cfg.data}: needs train and val images (train {len(train_set)}, val {len(val_set)})"
        )
    engine.seed_everything(cfg.seed)
    model = build_segmenter(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    task = LungTask(DiceBCELoss(cfg.dice_weight, cfg.bce_weight), cfg.threshold)
    ecfg = engine.EngineConfig(
        max_epochs=cfg.max_epochs,
        patience=cfg.patience,
        seed=cfg.seed,
        device=cfg.device,
        precision=cfg.precision,
        progress=cfg.progress,
        mlflow=cfg.mlflow,
    )
    loaders = [
        engine.make_loader(
            ds, cfg.batch_size, shuffle=shuffle, seed=cfg.seed, num_workers=cfg.workers
        )
        for ds, shuffle in ((train_set, True), (val_set, False))
    ]
    result = engine.fit(model, task, *loaders, optimizer, ecfg, run)
    metrics = evaluate_model(model, cfg, run, splits=("val", "test"))
    finish_mlflow(run, cfg.mlflow)
    return LungsTrainResult(run, result, metrics)


def evaluate_model(
    model: LungSegmenter,
    cfg: LungsTrainConfig,
    run: Path,
    splits=("val", "test"),
    batch_size=0,
    device: str | None = None,
) -> dict[str, Any]:
    """Per-image and mean Dice / IoU / HD95 on post-processed masks; writes metrics.json."""
    dev = resolve_device(device or cfg.device)
    batch_size = inference_batch(batch_size, dev)
    model.to(dev).eval()
    old = json.loads((run / METRICS).read_text()) if (run / METRICS).is_file() else {}
    metrics: dict[str, Any] = {
        **old,
        "size": cfg.size,
        "threshold": cfg.threshold,
        "data": str(cfg.data),
    }
    per_image_rows = [r for r in _read_per_image(run) if r[0] not in splits]
    for split in splits:
        ds = LungsDataset(cfg.data, split, cfg.size)  # type: ignore[arg-type]
        if not len(ds):
            metrics[split] = {"n": 0}
            continue
        preds, raws, targets, flags = [], [], [], []
        for start in range(0, len(ds), batch_size):
            items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            x = torch.stack([im for im, _ in items])[:, 0].numpy()
            probs = predict_batch(model, x, cfg.size, dev)
            for k, (prob, (_, y)) in enumerate(zip(probs, items, strict=True)):
                row = ds.rows[start + k]
                content = content_fraction(row["width"], row["height"])
                raw, final, q = finish_mask(prob, cfg.threshold, content)
                preds.append(final), raws.append(raw), targets.append(y[0].numpy() > 0.5)
                flags.append(q.flag)
        per = segmentation_metrics(np.stack(preds), np.stack(targets))
        raw_dice = segmentation_metrics(np.stack(raws), np.stack(targets))["dice"]
        summary = summarize(per)
        summary["dice_raw_mean"] = float(raw_dice.mean())
        summary["flags"] = {f: flags.count(f) for f in sorted(set(flags))}
        metrics[split] = summary
        for k, row in enumerate(ds.rows):
            per_image_rows.append(
                [
                    split,
                    row["image_id"],
                    round(per["dice"][k], 5),
                    round(per["iou"][k], 5),
                    round(per["hd95"][k], 3),
                    round(raw_dice[k], 5),
                    flags[k],
                ]
            )
    atomic_write_json(run / METRICS, metrics)
    with (run / PER_IMAGE).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "image_id", "dice", "iou", "hd95_px", "dice_raw", "flag"])
        writer.writerows(per_image_rows)
    return metrics


def _read_per_image(run: Path) -> list[list]:
    """Rows of an earlier per_image.csv (kept for the splits not re-evaluated)."""
    if not (run / PER_IMAGE).is_file():
        return []
    with (run / PER_IMAGE).open(newline="") as fh:
        return list(csv.reader(fh))[1:]


def evaluate_lungs(cfg: LungsEvaluateConfig) -> dict[str, Any]:
    """`lungs evaluate RUN`: reload the best weights and (re)write metrics.json."""
    if cfg.run is None:
        raise ConfigError("run: give the run folder")
    model, train_cfg = load_lung_run(cfg.run)
    for split in cfg.splits:
        if split not in ("train", "val", "test"):
            raise ConfigError(f"splits: {split!r} is not one of train, val, test")
    return evaluate_model(
        model, train_cfg, Path(cfg.run), tuple(cfg.splits), cfg.batch_size, cfg.device
    )


def describe(metrics: dict[str, Any]) -> str:
    """One line per split for the CLI."""
    lines = []
    for split, m in metrics.items():
        if isinstance(m, dict) and "n" in m:
            if not m["n"]:
                lines.append(f"{split}: no images")
                continue
            lines.append(
                f"{split}: n={m['n']} Dice {m['dice_mean']:.4f} (min {m['dice_min']:.3f}) "
                f"IoU {m['iou_mean']:.4f} HD95 {m['hd95_px_mean']:.2f} px "
                f"(undefined {m['hd95_undefined']}) flags {m['flags']}"
            )
    return "\n".join(lines)


__all__ = [
    "LungTask",
    "LungsDataset",
    "LungsTrainResult",
    "describe",
    "evaluate_lungs",
    "evaluate_model",
    "read_lung_set",
    "train_lungs",
]
