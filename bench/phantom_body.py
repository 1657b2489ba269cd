"""A backbone trained on clean synthetic phantoms: a stand-in for ImageNet weights offline.

How to run: ``.venv/bin/python bench/phantom_body.py [--quick] [--out bench_out/phantom_body]
[--backbone mobilenet_v2] [--n 900] [--size 128] [--epochs 20] [--lr 1e-3] [--shortcut-rate 0.0]
[--seed 1] [--threads N]``. Prints the weights file
(``OUT/body/body-NAME/stage2-NAME/model.pt``), which any ``--weights PATH`` accepts, e.g.
``cxrguide bench shortcut --weights OUT/body/body-NAME/stage2-NAME/model.pt``. Without
``--out`` it trains in a temporary folder (a timing/accuracy check that keeps nothing).

Why: the shortcut benchmark from random weights cannot learn the phantoms' lesions in a
CPU-sized budget (its ``input-mask`` variant, which removes the markers, stays at chance), so
it cannot tell whether attention would *keep* accuracy without the marker. The study's bodies
start from ImageNet, i.e. with features that already see image structure; without network
access the closest honest substitute is a body that learnt the findings on separate phantoms
(drawn with another ``--seed``, so no film is shared with the benchmark's data). It is
labelled ``file:...`` everywhere, never "pretrained on ImageNet".

Training: the paper's head, Adam (from random weights the study's SGD barely moves), no
augmentation, best validation epoch kept (the engine's checkpoints make a killed run resumable:
run the same command again).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from _common import add_quick, emit, load, torch_threads
from cxrguide.config import PrepareConfig, SynthConfig, TrainConfig
from cxrguide.core.runs import MODEL_WEIGHTS, RunInfo, save_run
from cxrguide.data.datasets import Prepared
from cxrguide.data.prepare import prepare
from cxrguide.data.synthetic import generate_dataset
from cxrguide.evaluation.evaluate import score_split
from cxrguide.models.zoo import create_model, get_spec
from cxrguide.training.finetune import fine_tune


def phantom_prepared(out: Path, n: int, size: int, seed: int, shortcut_rate: float) -> Prepared:
    """Synthetic films -> prepared folder under ``out`` (both reused when present)."""
    synth = (out / "synth").resolve()
    generate_dataset(SynthConfig(out=synth, n=n, size=size, seed=seed,
                                 shortcut_rate=shortcut_rate), progress=False)  # fmt: skip
    prepare(PrepareConfig(source=[f"synthetic={synth}"], out=out / "prep", size=size, seed=seed))
    return Prepared.open(out / "prep")


def train_body(name: str, prepared: Prepared, out: Path, *, size: int, epochs: int, lr: float,
               seed: int) -> tuple[Path, dict]:  # fmt: skip
    """Fine-tune ``name`` from random init on ``prepared``; returns (weights file, leaderboard row)."""
    init = out / f"init-{name}"
    model = create_model(name, "none", seed=seed)
    info = RunInfo(model.name, 0, size, [128, 64], [0.10, 0.05], "elu", model.weights_source)
    save_run(init, model, info)
    cfg = TrainConfig(stage=2, data=prepared.root, backbone=name, out=out / f"body-{name}",
                      image_size=size, max_epochs=epochs, patience=epochs, finetune_lr=lr,
                      augment=False, seed=seed, resume=True)  # fmt: skip
    row = fine_tune(cfg, model, info, prepared, None, score_split, optimizer="adam")
    return Path(row["run"]) / MODEL_WEIGHTS, row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="keep the body here (default: a temporary folder)")
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--n", type=int, default=900)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--shortcut-rate", type=float, default=0.0)
    ap.add_argument(
        "--seed", type=int, default=1, help="data and training seed (not the bench's 0)"
    )
    ap.add_argument("--threads", type=int, default=0)
    add_quick(ap)
    args = ap.parse_args()
    if args.quick:
        args.n, args.size, args.epochs = 90, 64, 2
    before = load()
    if args.threads or args.quick:  # --quick on a busy machine: 1 thread
        torch_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        t0 = time.perf_counter()
        prepared = phantom_prepared(out, args.n, args.size, args.seed, args.shortcut_rate)
        weights, row = train_body(get_spec(args.backbone).name, prepared, out / "body",
                                  size=args.size, epochs=args.epochs, lr=args.lr, seed=args.seed)  # fmt: skip
        minutes = (time.perf_counter() - t0) / 60
        print(f"{weights}: val accuracy {row['val_accuracy']:.3f}, test accuracy "
              f"{row['test_accuracy']:.3f} ({minutes:.1f} min)")  # fmt: skip
    emit("phantom_body", {"backbone": args.backbone, "n": args.n, "size": args.size,
                          "epochs": args.epochs, "weights": str(weights) if args.out else "",
                          "val_accuracy": row["val_accuracy"],
                          "test_accuracy": row["test_accuracy"], "minutes": minutes}, before)  # fmt: skip


if __name__ == "__main__":
    main()
