"""Stage I wall time: head trained on the feature cache vs recomputing the frozen body every epoch.

How to run: ``.venv/bin/python bench/stage1_cache.py [--quick] [--n 200] [--size 224] [--epochs 30]
[--backbone mobilenet_v2] [--weights none|imagenet|PATH] [--batch-size 32] [--seed 0]
[--threads N]``. It writes a synthetic prepared set of N images (8:1:1 split) into a temporary
folder, then runs :func:`cxrguide.training.stage1.stage1` twice on it with the same config and
seed: once with the feature cache (the body runs once per image; building the cache is inside
the timed region) and once with ``feature_cache=False`` (the body runs on every train and val
image each epoch). Early stopping is disabled (patience = epochs) so both run all epochs; the
evaluation Stage I does after training is skipped in both (it is identical). It prints both
wall times and their ratio and asserts the two trained heads (and val-loss histories) match.
The issue's target is >= 20x at 224 px with MobileNet V2 on the 2-core CPU; the ceiling is about
epochs x (train + val) / N (27x for 30 epochs at 8:1:1), because the cache still runs the body
once on every image.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from _common import add_quick, emit, load, torch_threads
from _prepared import write_prepared
from cxrguide.config import TrainConfig
from cxrguide.data.datasets import Prepared
from cxrguide.models import zoo  # noqa: F401  (imported up front: timm's import is not Stage I time)
from cxrguide.training import stage1 as stages


@contextlib.contextmanager
def quiet_stage1() -> Iterator[dict]:
    """Capture the trained model instead of saving + evaluating it; no progress bars."""
    captured: dict = {}
    finish, engine_config = stages.finish_run, stages.engine_config

    def capture(run, cfg, model, info, score):
        captured["model"], captured["run"] = model, run
        return {}

    stages.finish_run = capture
    stages.engine_config = lambda cfg: dataclasses.replace(engine_config(cfg), progress=False)
    try:
        yield captured
    finally:
        stages.finish_run, stages.engine_config = finish, engine_config


def run_once(cfg: TrainConfig, prepared: Prepared) -> tuple[float, torch.nn.Module, Path]:
    with quiet_stage1() as captured:
        t0 = time.perf_counter()
        stages.stage1(cfg, cfg.backbone, prepared, score=None)
        seconds = time.perf_counter() - t0
    return seconds, captured["model"], captured["run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images in the synthetic set")
    parser.add_argument("--size", type=int, default=224, help="input side (cache side too)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default="none", help="none | imagenet | PATH")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default, one per core); use 1 "
        "when other jobs load the CPU (see bench/README.md)",
    )
    add_quick(parser)
    args = parser.parse_args()
    if args.quick:
        args.n, args.size, args.epochs = 60, 96, 10
    before = load()
    if args.threads or args.quick:  # --quick on a busy machine: 1 thread
        torch_threads(args.threads)
    print(
        f"load average before: {os.getloadavg()[0]:.2f} (1 min), torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs"
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepared = Prepared.open(write_prepared(tmp / "prep", args.n, args.size, args.seed))
        counts = prepared.manifest["split"].value_counts().to_dict()
        base = TrainConfig(
            stage=1,
            data=prepared.root,
            backbone=args.backbone,
            out=tmp / "runs",
            weights=args.weights,
            image_size=args.size,
            max_epochs=args.epochs,
            patience=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            device="cpu",
        )
        results = {}
        for mode, cached in (("feature cache", True), ("recompute body", False)):
            cfg = dataclasses.replace(base, feature_cache=cached, out=tmp / mode.replace(" ", "_"))
            results[mode] = run_once(cfg, prepared)
            print(f"  {mode}: {results[mode][0]:.1f} s")
        (t_cache, m_cache, r_cache), (t_body, m_body, r_body) = results.values()
        diff = max(
            (a - b).abs().max().item()
            for a, b in zip(
                m_cache.head.state_dict().values(), m_body.head.state_dict().values(), strict=True
            )
        )
        loss_a = pd.read_csv(r_cache / "history.csv").val_loss.to_numpy()
        loss_b = pd.read_csv(r_body / "history.csv").val_loss.to_numpy()
        loss_diff = float(abs(loss_a - loss_b).max())

    print(
        f"\nStage I, {args.backbone} at {args.size} px, weights {args.weights}, "
        f"{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}"
    )
    print(
        f"images: {args.n} (train {counts.get('train', 0)}, val {counts.get('val', 0)}, "
        f"test {counts.get('test', 0)})"
    )
    print(f"{'mode':<16} {'wall s':>8} {'s/epoch':>8}")
    for mode, (seconds, _, _) in results.items():
        print(f"{mode:<16} {seconds:8.1f} {seconds / args.epochs:8.3f}")
    print(f"speed-up (recompute / cache): {t_body / t_cache:.1f}x   (target >= 20x)")
    print(f"max |head weight difference|: {diff:.2e}, max |val loss difference|: {loss_diff:.2e}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")
    emit(
        "stage1_cache",
        {
            "backbone": args.backbone,
            "size": args.size,
            "n": args.n,
            "epochs": args.epochs,
            "seconds_cache": t_cache,
            "seconds_recompute": t_body,
            "speedup_cache": t_body / t_cache,
            "max_head_diff": diff,
            "max_val_loss_diff": loss_diff,
        },
        before,
    )
    assert diff < 1e-4 and loss_diff < 1e-4, "the two Stage I runs trained different heads"


if __name__ == "__main__":
    main()
