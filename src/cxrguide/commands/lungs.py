"""`cxrguide lungs prepare | train | evaluate | predict`: the lung segmenter's steps."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrguide.config import (
    LungsEvaluateConfig,
    LungsPredictConfig,
    LungsPrepareConfig,
    LungsTrainConfig,
    add_config_flags,
    config_from_args,
)
from cxrguide.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "lungs",
        help="lung segmentation: prepare annotations, train/evaluate a U-Net, predict masks",
        description="Lung segmentation for the lung-guided classifier (Stage III).",
    )
    lungs = parser.add_subparsers(dest="lungs_command", metavar="ACTION")
    lungs.required = True

    p = lungs.add_parser(
        "prepare",
        help="V7/Darwin polygons or image+mask folders -> image + mask cache, patient split",
        description="Read lung annotations (--source v7=DIR, --source masks=DIR), cache images "
        "and masks at one square size, split 8:1:1 by patient, report rejects in rejected.csv.",
    )
    add_config_flags(p, LungsPrepareConfig)
    p.set_defaults(func=run_prepare)

    p = lungs.add_parser(
        "train",
        help="train a U-Net (Dice + BCE) on a 'lungs prepare' folder",
        description="Train (or resume) a lung U-Net; writes a self-describing run folder with "
        "metrics.json on val and test.",
    )
    add_config_flags(p, LungsTrainConfig)
    p.set_defaults(func=run_train)

    p = lungs.add_parser("evaluate", help="Dice / IoU / HD95 of a run, per image and mean")
    p.add_argument("run", type=Path, metavar="RUN", help="run folder from 'lungs train'")
    add_config_flags(p, LungsEvaluateConfig, exclude=("run",))
    p.set_defaults(func=run_evaluate)

    p = lungs.add_parser(
        "predict",
        help="lung masks for a prepared classifier set (--data PREP) or for image files",
        description="With --data PREP: write PREP/cache/lungs_<size>.npy aligned with the image "
        "cache and PREP/lung_quality.csv (--overlay DIR: one overlay PNG per row). With IMAGE...: "
        "masks at each file's own size, optional overlays.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder from 'lungs train'")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files to segment")
    add_config_flags(p, LungsPredictConfig, exclude=("run", "images"))
    p.set_defaults(func=run_predict)


def run_prepare(args: argparse.Namespace) -> int:
    from cxrguide.lungs.prepare import prepare_lungs

    result = prepare_lungs(config_from_args(LungsPrepareConfig, args))
    state = "already prepared (reused)" if result.reused else "prepared"
    splits = ", ".join(f"{k} {v}" for k, v in sorted(result.split_counts.items()))
    print(f"{state}: {result.n_images} images in {result.out} ({splits})")
    print(f"rejected: {result.n_rejected} (see {result.out / 'rejected.csv'})")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from cxrguide.lungs.train import describe, train_lungs

    result = train_lungs(config_from_args(LungsTrainConfig, args))
    fit = result.fit
    print(
        f"trained: {fit.epochs_run} epochs, best epoch {fit.best_epoch} "
        f"(val loss {fit.best_value:.4f}) in {result.run}"
    )
    print(describe(result.metrics))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from cxrguide.lungs.train import METRICS, describe, evaluate_lungs

    cfg = config_from_args(LungsEvaluateConfig, args)
    print(describe(evaluate_lungs(cfg)))
    print(f"written: {Path(cfg.run or '.') / METRICS}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from cxrguide.lungs.predict import predict_images, predict_prepared

    cfg = config_from_args(LungsPredictConfig, args)
    if cfg.data is not None and cfg.images:
        raise ConfigError("images: give either --data PREP or image files, not both")
    if cfg.data is None and not cfg.images:
        raise ConfigError("images: give --data PREP or at least one image file")
    if cfg.data is not None:
        result = predict_prepared(cfg)
        flags = ", ".join(f"{k} {v}" for k, v in sorted(result.flags.items()))
        print(f"masks: {result.n} images -> {result.masks} ({flags})")
        print(f"quality: {result.quality}")
        if result.overlays is not None:
            print(f"overlays: {result.n} -> {result.overlays}")
        return 0
    failed = 0
    for r in predict_images(cfg):
        if r.quality is None:
            failed += 1
            print(f"{r.path}: error: {r.error}")
            continue
        q = r.quality
        written = ", ".join(str(p) for p in (r.mask_file, r.overlay_file) if p is not None)
        print(
            f"{r.path}: {q.flag} (lung area {q.area_fraction:.3f}, {q.lungs} lungs kept of "
            f"{q.components} components)" + (f" -> {written}" if written else "")
        )
    return 2 if failed else 0
