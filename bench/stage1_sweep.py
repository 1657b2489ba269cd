"""Stage I feature extraction for every backbone at its Table-2 size: fp32 vs bf16 + channels-last.

How to run: ``.venv/bin/python bench/stage1_sweep.py [--quick] [--n 256] [--models all|a,b,...]
[--batch-size 16] [--full 2631] [--cache-size 456] [--weights none] [--seed 0] [--threads N]``.
It writes a synthetic prepared set of N images into a temporary folder and, for each backbone
(random init by default: weights do not change the speed, but see the cosine note), times
:func:`cxrguide.training.features.pooled_features` (the exact code Stage I runs, including the
cache's resize to the backbone's size) twice: fp32 contiguous, then ``--precision bf16``
autocast with channels-last. Each mode gets one untimed warm-up batch first (oneDNN builds its
kernels on the first call). It prints seconds per image, GFLOP/s achieved (FLOPs = 2 x MACs of
one forward from ``cxrguide.models.flops.measure_model``; the head's share is negligible), the
bf16/fp32 cosine similarity of the pooled features (mean and worst image; target >= 0.99) and
the same after subtracting the fp32 mean feature ("centred": a random body's features share a
large common mode that alone makes the plain cosine close to 1, while the image-dependent part
is tiny and bf16 rounding dominates it; with ``--weights imagenet`` this is the telling one), and
the estimate for the study's full 2,631-image set summed over all backbones (target <= 30 min),
from wall time as measured and, for a shared machine, from CPU time spread over all cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import add_quick, emit, load, torch_threads
from _prepared import write_prepared
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.models.flops import measure_model
from cxrguide.models.zoo import create_model, get_spec, list_models
from cxrguide.training.features import pooled_features

MODES = (("fp32", "fp32", False), ("bf16+CL", "bf16", True))


def time_mode(
    model, prepared: Prepared, size: int, precision: str, channels_last: bool, batch_size: int
) -> tuple[float, float, np.ndarray]:
    """Wall and CPU seconds for all N images (after one warm-up batch) and the (N, C) features."""
    amp = torch.bfloat16 if precision == "bf16" else None
    warm = torch.stack(
        [
            CxrDataset(
                prepared, rows=np.arange(batch_size) % len(prepared.manifest), image_size=size
            )[i]["image"]
            for i in range(batch_size)
        ]
    )
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
        warm = warm.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        model.forward_features(warm)
    shutil.rmtree(prepared.root / "features", ignore_errors=True)  # never reuse a cached run
    t0, c0 = time.perf_counter(), time.process_time()
    feats = pooled_features(
        model,
        prepared,
        size,
        torch.device("cpu"),
        batch_size=batch_size,
        precision=precision,
        channels_last=channels_last,
        progress=False,
    )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.to(memory_format=torch.contiguous_format)
    return seconds, cpu, np.array(feats)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(1)
    return num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="images to extract features for")
    parser.add_argument("--models", default="all", help="'all' or a comma list of zoo names")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--full", type=int, default=2631, help="images in the full-set estimate")
    parser.add_argument("--cache-size", type=int, default=456, help="prepared cache side (px)")
    parser.add_argument(
        "--weights",
        default="none",
        help="none (default) | imagenet ($CXRGUIDE_WEIGHTS_DIR or the hub cache)",
    )
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
        args.n, args.models, args.cache_size, args.batch_size = 16, "mobilenet_v2", 224, 8
    before = load()
    if args.threads or args.quick:  # --quick on a busy machine: 1 thread
        torch_threads(args.threads)
    names = (
        [n for n in list_models() if not n.startswith("covidnet")]
        if args.models == "all"
        else [get_spec(n.strip()).name for n in args.models.split(",")]
    )
    print(
        f"weights {args.weights}; load average before: {os.getloadavg()[0]:.2f} (1 min), "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, {args.n} images, "
        f"batch {args.batch_size}"
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Prepared.open(
            write_prepared(Path(tmp) / "prep", args.n, args.cache_size, args.seed)
        )
        for name in names:
            size = get_spec(name).input_size[0]
            gflop = 2 * measure_model(name).macs / 1e9
            model = create_model(name, args.weights, seed=args.seed).freeze_body()
            row = {"name": name, "size": size, "gflop": gflop}
            feats = {}
            for label, precision, channels_last in MODES:
                seconds, cpu, feats[label] = time_mode(
                    model, prepared, size, precision, channels_last, args.batch_size
                )
                row[label], row[f"{label} cpu"] = seconds / args.n, cpu / args.n
            cos = cosine(feats["fp32"], feats["bf16+CL"])
            row["cos_mean"], row["cos_min"] = float(cos.mean()), float(cos.min())
            # stricter: only the part of the features that differs between images
            mean = feats["fp32"].mean(0)
            row["cos_centred_min"] = float(
                cosine(feats["fp32"] - mean, feats["bf16+CL"] - mean).min()
            )
            rows.append(row)
            print(
                f"  {name}: fp32 {row['fp32']:.3f} s/img, bf16+CL {row['bf16+CL']:.3f} s/img, "
                f"cosine min {row['cos_min']:.4f}",
                flush=True,
            )

    print(
        f"\n{'backbone':<20} {'px':>4} {'GFLOP':>6} | {'fp32 s/img':>10} {'GFLOP/s':>7} | "
        f"{'bf16 s/img':>10} {'GFLOP/s':>7} {'speed-up':>8} | {'cos mean':>8} {'cos min':>8} "
        f"{'centred':>8}"
    )
    for r in rows:
        print(
            f"{r['name']:<20} {r['size']:>4} {r['gflop']:6.2f} | {r['fp32']:10.4f} "
            f"{r['gflop'] / r['fp32']:7.1f} | {r['bf16+CL']:10.4f} "
            f"{r['gflop'] / r['bf16+CL']:7.1f} {r['fp32'] / r['bf16+CL']:7.2f}x | "
            f"{r['cos_mean']:8.5f} {r['cos_min']:8.5f} {r['cos_centred_min']:8.5f}"
        )
    total_gflop = sum(r["gflop"] for r in rows)
    for label, _, _ in MODES:
        per_image = sum(r[label] for r in rows)
        minutes = per_image * args.full / 60
        print(
            f"{label:<8} all {len(rows)} backbones: {per_image:.3f} s/img, "
            f"{total_gflop / per_image:.1f} GFLOP/s; {args.full} images: {minutes:.1f} min "
            f"(target <= 30 min: {'met' if minutes <= 30 else 'NOT met'})"
        )
        cpu_minutes = sum(r[f"{label} cpu"] for r in rows) * args.full / 60
        print(
            f"{'':<8} CPU time {cpu_minutes:.1f} CPU-min for {args.full} images; on "
            f"{os.cpu_count()} idle cores at perfect scaling: "
            f"{cpu_minutes / (os.cpu_count() or 1):.1f} min (an idealised bound, not measured)"
        )
    worst = min(r["cos_min"] for r in rows)
    centred = min(r["cos_centred_min"] for r in rows)
    print(
        f"total {total_gflop:.1f} GFLOP per image; worst bf16/fp32 cosine {worst:.4f} "
        f"(target >= 0.99: {'met' if worst >= 0.99 else 'NOT met'}); worst centred cosine "
        f"{centred:.4f}"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")
    emit(
        "stage1_sweep",
        {
            "backbones": [r["name"] for r in rows],
            "n": args.n,
            "speedup_bf16_cl_mean": float(np.mean([r["fp32"] / r["bf16+CL"] for r in rows])),
            "cosine_min": worst,
            "cosine_centred_min": centred,
            "full_set_minutes": {
                label: sum(r[label] for r in rows) * args.full / 60 for label, _, _ in MODES
            },
            "per_backbone": {
                r["name"]: {
                    "px": r["size"],
                    "gflop": r["gflop"],
                    "s_img_fp32": r["fp32"],
                    "s_img_bf16_cl": r["bf16+CL"],
                    "speedup": r["fp32"] / r["bf16+CL"],
                }
                for r in rows
            },
        },
        before,
    )


if __name__ == "__main__":
    main()
