"""Does Stage I under ``--precision bf16 --channels-last`` train the same head as fp32?

How to run: ``.venv/bin/python bench/stage1_bf16_head.py [--quick] [--n 600] [--size 128]
[--backbones mobilenet_v2,efficientnet_b0] [--body-epochs 8] [--body-n 3600] [--shortcut-rate 0.95]
[--weights none|imagenet|PATH] [--epochs 30] [--seed 0] [--threads N] [--out DIR]``.

``bench/stage1_sweep.py`` shows bf16 features agree with fp32 by cosine; this checks the claim
that matters downstream: the head trained on them scores the same. A random body says little
(its features barely separate the classes), and ImageNet files cannot be downloaded here, so
by default each backbone first gets a *trained* body: ``cxrguide pretrain`` on clean phantoms
(``--body-n`` films, ``--body-epochs``, a separate seed), the same recipe ``--weights phantom``
builds; the Stage I phantoms carry class markers (``--shortcut-rate``, default 0.95);
what is checked is the precision of the features, not what they encode. Its weights file is
then the ``--weights`` of two Stage I runs that differ only in precision (fp32 contiguous vs
bf16 autocast + channels-last feature extraction), same seed, same head init. Both runs are
evaluated the normal way (fp32 full model) on val and test; the script prints accuracy, macro
F1, the share of test images on which the two heads agree, the largest probability gap and the
bf16/fp32 feature cosine (mean, worst image, share of images >= 0.99). ``--weights imagenet``
(with the files on disk) or a PATH skips the body training and uses those weights directly.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import add_quick, emit, load, torch_threads
from cxrguide.config import PrepareConfig, SynthConfig, TrainConfig
from cxrguide.config.pretrain import PretrainConfig
from cxrguide.data.datasets import Prepared
from cxrguide.data.prepare import prepare
from cxrguide.data.synthetic import generate_dataset
from cxrguide.evaluation.evaluate import score_split
from cxrguide.experiments.phantom_body import pretrain
from cxrguide.models.zoo import create_model, get_spec
from cxrguide.training import stage1 as stages
from cxrguide.training.features import pooled_features


def stage1_run(name: str, weights: str, prepared: Prepared, args, out: Path, bf16: bool) -> dict:
    cfg = TrainConfig(
        stage=1,
        data=prepared.root,
        backbone=name,
        weights=weights,
        out=out / ("bf16" if bf16 else "fp32"),
        image_size=args.size,
        max_epochs=args.epochs,
        patience=args.epochs,
        lr=args.lr,
        precision="bf16" if bf16 else "fp32",
        channels_last=bf16,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    row = stages.stage1(cfg, name, prepared, score_split)
    run = Path(row["run"])
    pred = pd.read_csv(run / "predictions_test.csv")
    return {**row, "seconds": time.perf_counter() - t0, "pred": pred}


def phantom_prepared(out: Path, n: int, size: int, seed: int, shortcut_rate: float) -> Prepared:
    """Synthetic films -> prepared folder under ``out`` (both reused when present)."""
    synth = (out / "synth").resolve()
    generate_dataset(
        SynthConfig(out=synth, n=n, size=size, seed=seed, shortcut_rate=shortcut_rate),
        progress=False,
    )
    prepare(PrepareConfig(source=[f"synthetic={synth}"], out=out / "prep", size=size, seed=seed))
    return Prepared.open(out / "prep")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="synthetic phantoms (8:1:1 split)")
    ap.add_argument("--size", type=int, default=128, help="image size for body and Stage I")
    ap.add_argument("--backbones", default="mobilenet_v2,efficientnet_b0")
    ap.add_argument("--body-epochs", type=int, default=8, help="'cxrguide pretrain' epochs")
    ap.add_argument("--body-n", type=int, default=3600, help="'cxrguide pretrain' phantoms")
    ap.add_argument("--shortcut-rate", type=float, default=0.95, help="synthetic marker rate")
    ap.add_argument(
        "--weights",
        default="none",
        help="'none': train a body first; 'imagenet' or PATH: use those weights",
    )
    ap.add_argument("--epochs", type=int, default=30, help="Stage I epochs (no early stop)")
    ap.add_argument("--lr", type=float, default=1e-2, help="Stage I SGD learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="", help="keep the runs here (default: a temporary folder)")
    add_quick(ap)
    args = ap.parse_args()
    if args.quick:
        args.n, args.size, args.backbones, args.body_epochs, args.body_n, args.epochs = (
            90,
            64,
            "mobilenet_v2",
            1,
            60,
            3,
        )
    before = load()
    if args.threads or args.quick:  # --quick on a busy machine: 1 thread
        torch_threads(args.threads)
    print(
        f"load average before: {os.getloadavg()[0]:.2f}, torch threads "
        f"{torch.get_num_threads()}, {args.n} phantoms at {args.size} px, seed {args.seed}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        prepared = phantom_prepared(out, args.n, args.size, args.seed, args.shortcut_rate)
        for raw in args.backbones.split(","):
            name = get_spec(raw.strip()).name
            if args.weights == "none":
                body = pretrain(
                    PretrainConfig(
                        backbone=name,
                        out=out / "bodies",
                        size=args.size,
                        n=args.body_n,
                        epochs=args.body_epochs,
                        seed=args.seed + 1001,
                        workers=1,
                    ),
                    progress=False,
                )
                print(f"  body {name}: held-out clean accuracy {body.test_accuracy:.3f}")
                weights = str(body.body)
            else:
                weights = args.weights
            fp32 = stage1_run(name, weights, prepared, args, out / name, bf16=False)
            bf16 = stage1_run(name, weights, prepared, args, out / name, bf16=True)
            model = create_model(name, weights).freeze_body()
            feats = {
                p: np.asarray(
                    pooled_features(
                        model, prepared, args.size, torch.device("cpu"), precision=p, progress=False
                    )
                )
                for p in ("fp32", "bf16")
            }
            a, b = feats["fp32"], feats["bf16"]
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
            probs = [c for c in fp32["pred"].columns if c.startswith("p_")]
            rows.append(
                {
                    "backbone": name,
                    "fp32 val": fp32["val_accuracy"],
                    "bf16 val": bf16["val_accuracy"],
                    "fp32 test": fp32["test_accuracy"],
                    "bf16 test": bf16["test_accuracy"],
                    "fp32 F1": fp32["test_macro_f1"],
                    "bf16 F1": bf16["test_macro_f1"],
                    "agree": float((fp32["pred"]["predicted"] == bf16["pred"]["predicted"]).mean()),
                    "max |dp|": float(
                        np.abs(
                            fp32["pred"][probs].to_numpy() - bf16["pred"][probs].to_numpy()
                        ).max()
                    ),
                    "cos mean": float(cos.mean()),
                    "cos min": float(cos.min()),
                    "cos>=0.99": float((cos >= 0.99).mean()),
                    "s fp32": fp32["seconds"],
                    "s bf16": bf16["seconds"],
                }
            )
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(4).to_string(index=False))
    worst = (table["fp32 test"] - table["bf16 test"]).abs().max()
    print(
        f"largest test-accuracy gap fp32 vs bf16: {100 * worst:.1f} points; lowest agreement "
        f"{100 * table['agree'].min():.1f}%; worst feature cosine {table['cos min'].min():.5f}"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    emit(
        "stage1_bf16_head",
        {
            "n": args.n,
            "size": args.size,
            "epochs": args.epochs,
            "max_test_accuracy_gap": float(worst),
            "min_agreement": float(table["agree"].min()),
            "min_feature_cosine": float(table["cos min"].min()),
            "per_backbone": {
                r["backbone"]: {k: v for k, v in r.items() if k != "backbone"} for r in rows
            },
        },
        before,
    )


if __name__ == "__main__":
    main()
