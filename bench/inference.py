"""CPU inference speed per backbone: eager fp32 vs channels-last vs bf16 autocast vs ONNX Runtime.

For each backbone at its own input size (or ``--size``), the classifier (``CxrClassifier``, the
module ``predict``/``serve`` run) is timed on ``--batches`` batches of ``--batch`` real chest
X-rays from ``../shared/data`` (letterboxed like the Predictor; drawn phantoms when the samples
are absent). Every path is built and warmed up first (two untimed batches); then the paths run
**interleaved**: ``--repeats`` rounds (default 10), each timing one pass of every path over the
batches in a rotating order, so a neighbour's burst on the shared machine hits all paths alike;
images/s is the median over the rounds (with the quartiles in the JSON line). Batch-1 latency is
timed the same way (``--latency-runs`` interleaved rounds). Printed per path: images/s, batch-1
latency, top-1 agreement with eager fp32 and the largest probability difference; then eager
fp32's median top-1 margin and how many classes it predicted. Agreement means little when one
class wins everything (random weights); the probability difference is the numerical measure.
The summary gives the mean speed-ups and the fastest path by throughput and by batch-1 latency
among those with >= 99 % agreement. ``--quick``: MobileNet V2 only, one batch of 8.

Paths: ``fp32`` eager; ``channels_last`` (NHWC weights and input); ``bf16`` (channels-last +
``torch.autocast(bfloat16)``); ``onnx`` (``cxrguide export``'s graph in onnxruntime, all graph
optimisations); ``onnx_int8`` (that graph statically quantized, QDQ, per-channel, U8S8 with
reduce_range, calibrated on 32 other films: what ``export --int8`` and ``--backend onnx-int8``
run; the JSON line's ``int8`` block has its speed-up over eager fp32 and over ONNX Runtime fp32
and its top-1 agreement per backbone, ``cpu_flags`` the instruction sets it ran with). Without
``--run`` each backbone has random weights (seeded; ``--weights
imagenet`` for pretrained bodies) and the paper head; weights do not change speed. With
``--run RUN`` a trained run's network is timed (a gated run gets elliptic lung masks); with
``--data PREP`` the timed films (and the agreement) are PREP's test films and INT8 is calibrated
on its validation films, as ``export --int8`` does; ``--no-int8-reduce-range``: 8-bit weights.

    python bench/inference.py [--quick] [--backbones all|a,b] [--batch 32] [--batches 2]
        [--repeats 10] [--size 0] [--latency-runs 10] [--threads 0] [--paths fp32,...] [--run RUN]
        [--data PREP] [--no-int8-reduce-range]

Measured before the paths were interleaved (one after another, 2 repeats; shared 2-core Xeon with
AMX/AVX512-BF16, load average 6-10 from other jobs; batch
8, all ten backbones, ``--threads 1``): mean speed-up over eager fp32, throughput / batch-1
latency: channels-last 1.41x / 1.31x, bf16 3.08x / 1.83x, ONNX Runtime 2.21x / 2.76x; max |dp|
vs fp32: ONNX 2e-7, bf16 2.3e-3. With torch's default 2 threads on the loaded machine, eager
PyTorch collapses (OpenMP threads wait on each other: 0.2-2.6 img/s) and ONNX Runtime was the
fastest path on every backbone. ONNX is the ``predict``/``serve`` default
(:data:`cxrguide.inference.backends.CPU_DEFAULT`): numerically identical to fp32, best for the
one-image-at-a-time case, and robust to a busy CPU.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import add_quick, emit, interleave, load, spread, torch_threads
from cxrguide.data.datasets import Prepared
from cxrguide.data.imaging import letterbox, read_image
from cxrguide.data.transforms import resize_image
from cxrguide.errors import ImageReadError
from cxrguide.inference.export import ExportModule, example_inputs, export_onnx
from cxrguide.inference.onnx_backend import OnnxRunner
from cxrguide.inference.predictor import collect_inputs
from cxrguide.inference.quantize import quantize_onnx
from cxrguide.models.saved import load_run
from cxrguide.models.zoo import create_model, get_spec, list_models

PATHS = ("fp32", "channels_last", "bf16", "onnx", "onnx_int8")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def prepared_images(prep: Path, split: str, n: int, size: int, seed: int = 0) -> np.ndarray:
    """``(n, size, size)`` float32 films of a prepared folder's split (a run's own data), a
    seeded sample, at the model's side by the one resize rule."""
    prepared = Prepared.open(prep)
    rows = prepared.rows(split)
    if len(rows) < n:
        raise SystemExit(f"{prep}: split {split!r} has {len(rows)} films, {n} needed")
    rows = np.sort(np.random.default_rng(seed).permutation(rows)[:n])
    images = torch.from_numpy(prepared.images[rows].astype(np.float32) / 255)
    return resize_image(images, size).numpy() if prepared.size != size else images.numpy()


def load_images(n: int, size: int, seed: int = 0, data: Path | None = None) -> np.ndarray:
    """``(n, size, size)`` float32 inputs: ``data``'s test films when given, else real films
    from ``../shared/data`` when available, else noisy phantoms."""
    if data is not None:
        return prepared_images(data, "test", n, size, seed)
    files, _ = collect_inputs([SHARED]) if SHARED.is_dir() else ([], [])
    rng = np.random.default_rng(seed)
    rng.shuffle(files)
    out: list[np.ndarray] = []
    for f in files:
        if len(out) == n:
            break
        try:
            out.append(letterbox(read_image(f)[0], size))
        except ImageReadError:
            continue
    while len(out) < n:
        yy, xx = np.mgrid[:size, :size] / size
        lungs = sum(
            ((xx - 0.5 - s * 0.2) / 0.15) ** 2 + ((yy - 0.45) / 0.3) ** 2 <= 1 for s in (-1, 1)
        )
        img = 0.6 - 0.35 * lungs + rng.normal(0, 0.05, (size, size))
        out.append(np.clip(img, 0, 1).astype(np.float32))
    return np.stack(out)


def calibration_feeds(
    size: int, gate: bool, n: int = 32, data: Path | None = None
) -> list[dict[str, np.ndarray]]:
    """INT8 calibration batches: films drawn with another seed than the timed ones (with
    ``data``: its validation films, as ``export --int8`` calibrates)."""
    if data is not None:
        images = prepared_images(data, "val", n, size, seed=1)[:, None]
    else:
        images = load_images(n, size, seed=1)[:, None]
    masks = example_inputs(size, True, batch=n, seed=1)[1].numpy() if gate else None
    feeds = []
    for i in range(0, n, 8):
        feed = {"image": images[i : i + 8]}
        if masks is not None:
            feed["lung_mask"] = masks[i : i + 8]
        feeds.append(feed)
    return feeds


def make_runner(
    path: str, model: torch.nn.Module, size: int, gate: bool, tmp: Path, args: argparse.Namespace
):
    """A callable ``(x (B,1,S,S) tensor, mask|None) -> probabilities (B,3) numpy``."""
    if path in ("onnx", "onnx_int8"):
        file = tmp / "model.onnx"
        export_onnx(ExportModule(model, size, gate).eval(), file, size)
        if path == "onnx_int8":  # calibrated on other films than the timed ones
            feeds = calibration_feeds(size, gate, data=args.data)
            file = quantize_onnx(
                file, tmp / "model.int8.onnx", feeds, reduce_range=args.int8_reduce_range
            )
        runner = OnnxRunner(file, threads=torch.get_num_threads())
        return lambda x, m: runner(x.numpy(), None if m is None else m.numpy())
    fast = path in ("channels_last", "bf16")
    if fast:
        model = model.to(memory_format=torch.channels_last)

    def run(x: torch.Tensor, m: torch.Tensor | None) -> np.ndarray:
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=path == "bf16"):
            logits = model(x) if m is None else model(x, m)
        return torch.softmax(logits.float(), 1).numpy()

    return run


def bench_one(model, size: int, gate: bool, images: np.ndarray, args) -> dict[str, dict]:
    """All paths built first, then timed round-robin: every repeat runs each path once, in a
    rotating order, so a load change on the shared machine hits all paths alike."""
    x_all = torch.from_numpy(images)[:, None]
    mask_all = example_inputs(size, True, batch=len(images))[1] if gate else None
    b = args.batch
    batches = [
        (x_all[i : i + b], None if mask_all is None else mask_all[i : i + b])
        for i in range(0, len(x_all), b)
    ]
    one = (x_all[:1], None if mask_all is None else mask_all[:1])
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for path in args.paths:
            (Path(tmp) / path).mkdir()
            runs[path] = make_runner(path, _copy(model), size, gate, Path(tmp) / path, args)
            for _ in range(2):  # warm-up: kernel selection, allocations, ORT arenas
                runs[path](*batches[0])
            runs[path](*one)
        probs = {p: np.concatenate([runs[p](x, m) for x, m in batches]) for p in args.paths}
        per_image = interleave(
            {p: (lambda r=r: [r(x, m) for x, m in batches]) for p, r in runs.items()},
            args.repeats,
            warmup=0,
        )
        latency = interleave(
            {p: (lambda r=r: r(*one)) for p, r in runs.items()}, args.latency_runs, warmup=0
        )
    reference = probs["fp32"]
    top2 = np.sort(reference, 1)[:, -2:]
    results: dict[str, dict] = {}
    for path in args.paths:
        rate = spread([len(x_all) / t for t in per_image[path]])
        results[path] = {
            "img_s": rate["median"],
            "img_s_q1": rate["q1"],
            "img_s_q3": rate["q3"],
            "latency_ms": 1000 * spread(latency[path])["median"],
            "agreement": float((probs[path].argmax(1) == reference.argmax(1)).mean()),
            "max_dp": float(np.abs(probs[path] - reference).max()),
            "fp32_margin": float(np.median(top2[:, 1] - top2[:, 0])),
            "fp32_classes": len(set(reference.argmax(1).tolist())),
        }
    return results


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval()


def _int8_figures(table: dict[str, dict]) -> dict:
    """INT8 vs eager fp32 and vs ONNX Runtime fp32, per backbone (throughput, batch-1 speed-up,
    top-1 agreement with eager fp32); {} when the INT8 path was not run."""
    if not all("onnx_int8" in t and "onnx" in t for t in table.values()):
        return {}
    per = {
        name: {
            "int8_speedup": t["onnx_int8"]["img_s"] / t["fp32"]["img_s"],
            "int8_vs_onnx_fp32": t["onnx_int8"]["img_s"] / t["onnx"]["img_s"],
            "int8_latency_vs_onnx_fp32": t["onnx"]["latency_ms"] / t["onnx_int8"]["latency_ms"],
            "int8_agreement": t["onnx_int8"]["agreement"],
        }
        for name, t in table.items()
    }
    return {"int8": per, "cpu_flags": cpu_flags()}


def cpu_flags() -> list[str]:
    """The instruction sets INT8 speed depends on (VNNI makes U8S8 dot products cheap)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    found = set(text.split())
    return [flag for flag in wanted if flag in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="all", help="'all' or a comma list of zoo names")
    parser.add_argument("--run", action="append", default=[], help="time a trained run instead")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2, help="batches per timed pass")
    parser.add_argument("--size", type=int, default=0, help="input side (0: each backbone's own)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="timed passes per path, interleaved round-robin (>= 10)",
    )
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch/ORT threads (0: default)")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument(
        "--weights",
        default="none",
        help="none | imagenet (offline from $CXRGUIDE_WEIGHTS_DIR) for the bodies",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PREP",
        help="time this prepared folder's test films, calibrate INT8 on its validation films",
    )
    parser.add_argument(
        "--int8-reduce-range",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="INT8 weights in 7 bits (export's default; --no-: 8 bits, for VNNI CPUs)",
    )
    add_quick(parser)
    args = parser.parse_args(argv)
    if args.quick:  # one small backbone, 2 batches of 8 per pass
        args.backbones = "mobilenet_v2" if args.backbones == "all" else args.backbones
        args.batch, args.batches = min(args.batch, 8), 1
    before = load()
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if "fp32" not in args.paths or args.paths[0] != "fp32":
        args.paths = ["fp32"] + [p for p in args.paths if p != "fp32"]
    if args.threads or args.quick:  # --quick on a busy machine: 1 thread
        torch_threads(args.threads)
    jobs = []
    if args.run:
        for run in args.run:
            model, info = load_run(run)
            jobs.append((Path(run).name, model, args.size or info.image_size, info.lung_gate))
    else:
        names = [n for n in list_models() if not n.startswith("covidnet")]
        if args.backbones != "all":
            names = [get_spec(n.strip()).name for n in args.backbones.split(",")]
        for name in names:
            size = args.size or get_spec(name).input_size[0]
            jobs.append((name, None, size, False))
    print(
        f"# {os.cpu_count()} CPUs, torch {torch.__version__} threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}; batch {args.batch} x "
        f"{args.batches} x {args.repeats} "
        f"(median over interleaved passes), latency median of {args.latency_runs}"
    )
    header = f"{'backbone':<20} {'px':>4} " + " ".join(f"{p:>28}" for p in args.paths)
    units = " ".join(f"{'img/s  b1 ms  agree  max|dp|':>28}" for _ in args.paths)
    print(f"{header}  fp32 top-1\n{'':<26}{units}  margin, classes")
    table: dict[str, dict] = {}
    for name, model, size, gate in jobs:
        if model is None:
            model = create_model(name, args.weights, seed=0).eval()
        images = load_images(args.batch * args.batches, size, data=args.data)
        res = bench_one(model, size, gate, images, args)
        table[name] = res
        cells = " ".join(
            f"{r['img_s']:>6.1f} {r['latency_ms']:>6.0f} {r['agreement']:>6.1%} {r['max_dp']:>8.1e}"
            for r in res.values()
        )
        ref = res["fp32"]
        print(
            f"{name:<20} {size:>4} {cells}  {ref['fp32_margin']:.1e} {ref['fp32_classes']}",
            flush=True,
        )
        del model
    speedups = {
        p: statistics.mean(t[p]["img_s"] / t["fp32"]["img_s"] for t in table.values())
        for p in args.paths
    }
    lat = {
        p: statistics.mean(t["fp32"]["latency_ms"] / t[p]["latency_ms"] for t in table.values())
        for p in args.paths
    }
    print(
        "mean speed-up over eager fp32 (throughput / batch-1 latency): "
        + ", ".join(f"{p} {speedups[p]:.2f}x / {lat[p]:.2f}x" for p in args.paths)
    )
    ok = [p for p in args.paths if all(t[p]["agreement"] >= 0.99 for t in table.values())]
    drift = {p: max(t[p]["max_dp"] for t in table.values()) for p in ok}
    by_rate, by_latency = max(ok, key=speedups.get), max(ok, key=lat.get)
    print(
        f"with >= 99% top-1 agreement on every backbone: fastest throughput {by_rate} "
        f"({speedups[by_rate]:.2f}x, max |dp| {drift[by_rate]:.1e}), fastest batch-1 "
        f"{by_latency} ({lat[by_latency]:.2f}x, max |dp| {drift[by_latency]:.1e})"
    )
    emit(
        "inference",
        {
            "backbones": list(table),
            "batch": args.batch,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            **{f"speedup_{p}": speedups[p] for p in args.paths if p != "fp32"},
            **{f"latency_speedup_{p}": lat[p] for p in args.paths if p != "fp32"},
            "fastest_throughput": by_rate,
            "fastest_latency": by_latency,
            **_int8_figures(table),
            "per_backbone": {
                name: {
                    p: {
                        k: r[k]
                        for k in (
                            "img_s",
                            "img_s_q1",
                            "img_s_q3",
                            "latency_ms",
                            "agreement",
                            "max_dp",
                        )
                    }
                    for p, r in res.items()
                }
                for name, res in table.items()
            },
        },
        before,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
