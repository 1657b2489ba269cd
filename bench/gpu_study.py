"""GPU study: the paper's protocol on phantoms at the Table-2 sizes, images/s per stage.

What runs (the product's own code, on ``--n`` synthetic phantoms, 8:1:1, with elliptic lung
masks; random weights, seeded: weights do not change the speed):

* Stage I, every backbone of ``--backbones`` (default the ten of Table 2) at its Table-2 input
  size: the frozen body's pooled features for the train + val rows
  (:func:`cxrguide.training.features.pooled_features`, what ``train --stage 1`` runs), then
  ``--head-epochs`` of head training on them.
* Stage II and Stage III (lung gate + GAIN), the top four of the study (``--top``: VGG-16,
  MobileNet V2, EfficientNet B1, B3): ``--epochs`` epochs each through
  :func:`cxrguide.core.engine.fit` (train + val + checkpoint, CXR augmentation on).

Reported per stage and backbone: images/s (Stage II/III: the median steady epoch, the first
one being warm-up), peak GPU memory and mean/max GPU utilisation (sampled with pynvml, else
``nvidia-smi``), and an estimate of the whole protocol on the study's 2,631 images with the
epoch budget of ``--protocol-epochs`` (Stage I head, Stage II, Stage III; the issue's goal on one
H200: <= 10 minutes). On CUDA: bf16 autocast and channels-last (``--precision``,
``--channels-last``), pinned-memory loaders with ``--workers`` processes (default: one per
core, at most 16) and persistent workers, so decoding and resizing the uint8 cache keeps up.

On a CPU, ``--quick`` runs a smoke version (36 images, MobileNet V2 at 64 px, one Stage II/III
model, 2 epochs). ``--ddp-smoke`` under torchrun trains one Stage II model for ``--epochs`` on
every rank (NCCL on CUDA, gloo on CPU) and checks that the ranks end with identical weights:

    python bench/gpu_study.py [--quick] [--n 2631] [--backbones all] [--top a,b,c,d]
        [--epochs 2] [--head-epochs 3] [--protocol-epochs 30,30,30] [--batch-size 32]
        [--workers -1] [--device auto] [--precision auto] [--channels-last auto]
    torchrun --standalone --nproc-per-node NGPU bench/gpu_study.py --ddp-smoke [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from _common import add_quick, emit, load, torch_threads
from _prepared import write_prepared
from cxrguide.attention.gain import GainSettings, GuidedAttention
from cxrguide.core import engine
from cxrguide.core.device import resolve_device
from cxrguide.data.datasets import LUNG_CACHE, CxrAugment, CxrDataset, Prepared
from cxrguide.models.zoo import create_model, get_spec, list_models
from cxrguide.training.features import FeatureDataset, pooled_features, stage1_rows
from cxrguide.training.fit_tasks import ClassifierTask, FeatureTask, Stage3Task

TOP4 = ("vgg16", "mobilenet_v2", "efficientnet_b1", "efficientnet_b3")
STUDY_IMAGES = 2631


def write_data(root: Path, n: int, size: int, seed: int) -> Prepared:
    """Phantoms (:mod:`_prepared`) plus two elliptic lungs per film as the lung cache."""
    write_prepared(root, n, size, seed)
    yy, xx = np.mgrid[:size, :size] / size
    lungs = np.zeros((size, size), np.uint8)
    for side in (-1, 1):
        lungs[((xx - 0.5 - side * 0.2) / 0.15) ** 2 + ((yy - 0.45) / 0.3) ** 2 <= 1] = 255
    cache = np.lib.format.open_memmap(
        root / LUNG_CACHE.format(size=size), mode="w+", dtype=np.uint8, shape=(n, size, size)
    )
    cache[:] = lungs
    cache.flush()
    del cache
    return Prepared.open(root)


class GpuSampler:
    """Samples GPU utilisation (%) in a thread: pynvml when installed, else nvidia-smi."""

    def __init__(self, device: torch.device, every: float = 0.2) -> None:
        self.device, self.every, self.samples = device, every, []
        self.source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            self.source = "pynvml"
        except Exception:  # not installed or no NVML: fall back to the CLI
            if shutil.which("nvidia-smi"):
                cmd = [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-i",
                    str(index),
                ]
                self._read = lambda: float(
                    subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
                )
                self.source = "nvidia-smi"

    def __enter__(self) -> GpuSampler:
        if self.source != "none":
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.samples.append(self._read())
            except Exception:
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def figures(self) -> dict:
        out: dict = {"util_source": self.source}
        if self.samples:
            out.update(util_mean=statistics.mean(self.samples), util_max=max(self.samples))
        if self.device.type == "cuda":
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out


def loader(
    ds, batch_size: int, device: torch.device, workers: int, *, shuffle: bool, seed: int
) -> DataLoader:
    """Pinned memory and persistent, prefetching workers on CUDA; a DistributedSampler under
    torchrun. Order still depends only on (seed, epoch) (engine.fit reseeds it per epoch)."""
    extra: dict = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": 4}
    if engine.distributed():
        sampler = DistributedSampler(ds, shuffle=shuffle, seed=seed)
        return DataLoader(
            ds,
            batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            **extra,
        )
    return DataLoader(
        ds,
        batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
        **extra,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stage1(name: str, prepared: Prepared, args, device: torch.device, tmp: Path) -> dict:
    size = args.size or get_spec(name).input_size[0]
    model = create_model(name, "none", seed=args.seed).freeze_body().eval().to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    amp = torch.bfloat16 if args.precision == "bf16" else None
    warm = torch.rand(min(args.batch_size, 8), 1, size, size, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        model.forward_features(warm)  # kernel selection / cuDNN autotune, untimed
    shutil.rmtree(prepared.root / "features", ignore_errors=True)
    rows = stage1_rows(prepared)
    with GpuSampler(device) as gpu:
        sync(device)
        t0 = time.perf_counter()
        feats = pooled_features(
            model,
            prepared,
            size,
            device,
            rows=rows,
            batch_size=args.batch_size,
            precision=args.precision,
            channels_last=args.channels_last,
            progress=False,
            workers=args.workers,
        )
        sync(device)
        seconds = time.perf_counter() - t0
    labels = CxrDataset(prepared, "train").labels
    ecfg = engine.EngineConfig(
        max_epochs=args.head_epochs,
        patience=args.head_epochs,
        seed=args.seed,
        device=str(device),
        progress=False,
    )
    head = model.head.float()
    t0 = time.perf_counter()
    engine.fit(
        head,
        FeatureTask(1e-3),
        loader(
            FeatureDataset(feats, labels, prepared.rows("train")),
            32,
            device,
            0,
            shuffle=True,
            seed=args.seed,
        ),
        loader(
            FeatureDataset(feats, labels, prepared.rows("val")),
            32,
            device,
            0,
            shuffle=False,
            seed=args.seed,
        ),
        torch.optim.SGD(head.parameters(), lr=1e-4, momentum=0.9),
        ecfg,
        tmp / f"stage1-{name}",
    )
    head_epoch = (time.perf_counter() - t0) / args.head_epochs
    del model, feats
    return {
        "backbone": name,
        "px": size,
        "images": len(rows),
        "img_s": len(rows) / seconds,
        "head_epoch_s": head_epoch,
        **gpu.figures(),
    }


def fine_tune(
    stage: int, name: str, prepared: Prepared, args, device: torch.device, tmp: Path
) -> dict:
    """``args.epochs`` of Stage II or III through engine.fit; steady epoch time and images/s."""
    size = args.size or get_spec(name).input_size[0]
    model = create_model(name, "none", seed=args.seed).unfreeze_body()
    lungs = stage == 3
    train = CxrDataset(prepared, "train", image_size=size, augment=CxrAugment(), with_lungs=lungs)
    val = CxrDataset(prepared, "val", image_size=size, with_lungs=lungs)
    if stage == 2:
        net, task = model, ClassifierTask(1e-3)
    else:  # random body: BatchNorm has no statistics to freeze (as `train --stage 3` does)
        settings = GainSettings(gate=True, gain=True, erased_bn="clean")
        net, task = GuidedAttention(model, settings), Stage3Task(settings, 1e-3)
    ecfg = engine.EngineConfig(
        max_epochs=args.epochs,
        patience=args.epochs,
        seed=args.seed,
        device=str(device),
        precision=args.precision,
        channels_last=args.channels_last,
        progress=False,
    )
    marks: list[float] = []
    digests: list[float] = []  # weights at each epoch end, before fit restores the best epoch

    def epoch_end(epoch: int, row: dict) -> None:
        marks.append(time.perf_counter())
        digests.append(_digest(model))

    with GpuSampler(device) as gpu:
        t0 = time.perf_counter()
        engine.fit(
            net,
            task,
            loader(train, args.batch_size, device, args.workers, shuffle=True, seed=args.seed),
            loader(val, args.batch_size, device, args.workers, shuffle=False, seed=args.seed),
            torch.optim.SGD(
                [p for p in net.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
            ),
            ecfg,
            tmp / f"stage{stage}-{name}",
            on_epoch_end=epoch_end,
        )
    epochs = np.diff([t0, *marks])
    steady = float(np.median(epochs[1:] if len(epochs) > 1 else epochs))
    images = len(train) + len(val)
    return {
        "backbone": name,
        "px": size,
        "train": len(train),
        "val": len(val),
        "first_epoch_s": float(epochs[0]),
        "epoch_s": steady,
        "img_s": images / steady,
        "weights": digests,
        **gpu.figures(),
    }


def _digest(model: torch.nn.Module) -> float:
    return float(sum(p.detach().float().abs().sum().item() for p in model.parameters()))


def estimate_minutes(
    s1: list[dict], s2: list[dict], s3: list[dict], n: int, epochs: tuple[int, int, int]
) -> dict:
    """The protocol on ``n`` images: Stage I features once per backbone plus its head epochs,
    Stage II/III epochs per top model, from the measured rates (train + val ~ 90 % of n)."""
    scale = n / max(1, s1[0]["images"] / 0.9) if s1 else 1.0
    one = sum(r["images"] * scale / r["img_s"] + epochs[0] * r["head_epoch_s"] * scale for r in s1)
    two = sum(epochs[1] * r["epoch_s"] * n * 0.9 / (r["train"] + r["val"]) for r in s2)
    three = sum(epochs[2] * r["epoch_s"] * n * 0.9 / (r["train"] + r["val"]) for r in s3)
    return {
        "stage1": one / 60,
        "stage2": two / 60,
        "stage3": three / 60,
        "total": (one + two + three) / 60,
    }


def ddp_smoke(args, device: torch.device, prepared: Prepared, tmp: Path) -> dict:
    """One Stage II model on every rank; the ranks must end with the same weights."""

    engine.init_distributed(device)
    row = fine_tune(2, args.top[0], prepared, args, device, tmp)
    mine = torch.tensor(row.pop("weights"), dtype=torch.float64, device=device)
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    gap = max(float((t - every[0]).abs().max()) for t in every)  # per epoch, over ranks
    return {
        "backend": dist.get_backend(),
        "world_size": dist.get_world_size(),
        "ranks_identical": gap <= 1e-6 * float(every[0].abs().max()),
        "max_weight_sum_gap": gap,
        "stage2": row,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=STUDY_IMAGES, help="phantoms (the study: 2631)")
    ap.add_argument("--backbones", default="all", help="Stage I: 'all' (Table 2) or a list")
    ap.add_argument("--top", default=",".join(TOP4), help="Stage II/III models")
    ap.add_argument("--epochs", type=int, default=2, help="measured Stage II/III epochs (>= 2)")
    ap.add_argument("--head-epochs", type=int, default=3, help="measured Stage I head epochs")
    ap.add_argument(
        "--protocol-epochs",
        default="30,30,30",
        help="epoch budget of Stage I head, II, III for the protocol estimate",
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=0, help="input side (0: each Table-2 size)")
    ap.add_argument("--workers", type=int, default=-1, help="loader processes (-1: auto)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="auto (bf16 on CUDA) | fp32 | bf16")
    ap.add_argument("--channels-last", default="auto", help="auto (on CUDA) | on | off")
    ap.add_argument("--ddp-smoke", action="store_true", help="under torchrun: DDP check only")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: default; 1 with --quick on a busy machine)",
    )
    ap.add_argument("--seed", type=int, default=0)
    add_quick(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.size, args.epochs = min(args.n, 36), args.size or 48, 2
        args.backbones = "mobilenet_v2" if args.backbones == "all" else args.backbones
        args.top = "mobilenet_v2" if args.top == ",".join(TOP4) else args.top
        args.head_epochs, args.batch_size = 2, min(args.batch_size, 8)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    before = load()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.threads or (args.quick and not cuda):
        torch_threads(args.threads)
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    args.precision = ("bf16" if cuda else "fp32") if args.precision == "auto" else args.precision
    args.channels_last = cuda if args.channels_last == "auto" else args.channels_last == "on"
    if args.workers < 0:
        args.workers = min(16, os.cpu_count() or 1) if cuda else 0
    args.epochs = max(2, args.epochs)
    names = (
        [n for n in list_models() if not n.startswith("covidnet")]
        if args.backbones == "all"
        else [get_spec(b.strip()).name for b in args.backbones.split(",")]
    )
    args.top = [get_spec(b.strip()).name for b in args.top.split(",")]
    budget = tuple(int(e) for e in args.protocol_epochs.split(","))
    what = torch.cuda.get_device_name(device) if cuda else "CPU"
    rank0 = engine.is_main_process() and int(os.environ.get("RANK", "0")) == 0
    if rank0:
        print(
            f"# {what} ({device}), torch {torch.__version__}, {args.precision}, channels-last "
            f"{args.channels_last}, {args.workers} loader workers, batch {args.batch_size}; "
            f"{args.n} phantoms; load {before}",
            flush=True,
        )
    cache_size = max([args.size or get_spec(n).input_size[0] for n in names + args.top])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepared = write_data(tmp / "prep", args.n, cache_size, args.seed)
        if args.ddp_smoke:
            result = ddp_smoke(args, device, prepared, tmp)
            if rank0:
                emit("gpu_study_ddp", {"device": what, **result}, before)
            ok = result["ranks_identical"]
            torch.distributed.destroy_process_group()
            return 0 if ok else 1
        s1 = []
        for name in names:
            s1.append(stage1(name, prepared, args, device, tmp))
            print(
                f"stage I  {name:<20} {s1[-1]['px']:>4} px {s1[-1]['img_s']:8.1f} img/s "
                f"{_gpu(s1[-1])}",
                flush=True,
            )
        s2, s3 = [], []
        for stage, rows in ((2, s2), (3, s3)):
            for name in args.top:
                rows.append(fine_tune(stage, name, prepared, args, device, tmp))
                r = rows[-1]
                print(
                    f"stage {'II' if stage == 2 else 'III':<3}{name:<20} {r['px']:>4} px "
                    f"{r['img_s']:8.1f} img/s (epoch {r['epoch_s']:.1f} s, first "
                    f"{r['first_epoch_s']:.1f} s) {_gpu(r)}",
                    flush=True,
                )
    est = estimate_minutes(s1, s2, s3, STUDY_IMAGES, budget)  # type: ignore[arg-type]
    print(
        f"protocol estimate for {STUDY_IMAGES} images, epochs {budget}: stage I "
        f"{est['stage1']:.1f} min, II {est['stage2']:.1f} min, III {est['stage3']:.1f} min, "
        f"total {est['total']:.1f} min (goal on one H200: <= 10)"
    )
    slim = [{k: v for k, v in r.items() if k != "weights"} for r in s2 + s3]
    emit(
        "gpu_study",
        {
            "device": what,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "workers": args.workers,
            "batch": args.batch_size,
            "n": args.n,
            "stage1": s1,
            "stage2": slim[: len(s2)],
            "stage3": slim[len(s2) :],
            "ratio_stage3_over_stage2_epoch": statistics.mean(
                b["epoch_s"] / a["epoch_s"] for a, b in zip(s2, s3, strict=True)
            ),
            "protocol_epochs": list(budget),
            "protocol_minutes": est,
        },
        before,
    )
    return 0


def _gpu(row: dict) -> str:
    if "peak_mem_gib" not in row:
        return ""
    util = (
        f", util {row['util_mean']:.0f}% (max {row['util_max']:.0f}%)" if "util_mean" in row else ""
    )
    return f"peak {row['peak_mem_gib']:.1f} GiB{util}"


if __name__ == "__main__":
    sys.exit(main())
