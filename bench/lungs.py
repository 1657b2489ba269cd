"""Masks per second of `cxrguide lungs predict` at 256 px: batched vs one image at a time.

Times the exact code path ``lungs predict --data`` runs (:func:`segment_cache`: forward pass,
sigmoid, resize, threshold, two-largest-components + hole filling, quality flag) over a cache of
phantom-like films, once with ``--batch-size`` images per forward pass and once with 1, and
prints both side by side with their ratio: the modes run interleaved, round-robin, and the
median of ``--repeat`` rounds is kept (with its spread in the JSON line). The network part alone is
also shown, because post-processing runs on the CPU per image and bounds the speed-up on a GPU.

Weights do not change the speed: without ``--run`` an untrained U-Net of the default width is
used, after a few gradient steps on the phantoms so its masks look like lungs (post-processing
time depends on how fragmented the masks are).

    python bench/lungs.py [--quick] [--run RUN] [--n 48] [--size 256] [--batch-size 16]
                          [--repeat 10] [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _common import add_quick, emit, interleave, load, spread, torch_threads
from cxrguide.core.device import resolve_device
from cxrguide.lungs.predict import segment_cache
from cxrguide.lungs.segmenter import load_lung_run, predict_batch
from cxrguide.lungs.unet import DiceBCELoss, build_unet


def phantoms(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 films (n, size, size) with two dark elliptic lungs, and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        body = ((xx - 0.5) / 0.46) ** 2 + ((yy - 0.5) / 0.48) ** 2 <= 1
        lung = np.zeros((size, size), bool)
        for sign in (-1, 1):
            cx, rx, ry = 0.5 + sign * rng.uniform(0.19, 0.22), rng.uniform(0.13, 0.17), 0.3
            lung |= ((xx - cx) / rx) ** 2 + ((yy - 0.46) / ry) ** 2 <= 1
        img = np.where(body, 0.62, 0.08) - 0.38 * lung + rng.normal(0, 0.04, (size, size))
        images[i], masks[i] = (np.clip(img, 0, 1) * 255).astype(np.uint8), lung
    return images, masks


def warm_model(size: int, device: torch.device, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_unet("basicunet").to(device)
    images, masks = phantoms(8, size, seed=1)
    x = torch.from_numpy(images).float().div(255)[:, None].to(device)
    y = torch.from_numpy(masks).float()[:, None].to(device)
    opt, loss = torch.optim.AdamW(model.parameters(), lr=3e-3), DiceBCELoss()
    for _ in range(steps):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run folder from 'cxrguide lungs train' (default: fresh U-Net)")
    ap.add_argument("--n", type=int, default=48, help="images per timing")
    ap.add_argument("--size", type=int, default=256, help="cache and model side in px")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=10, help="interleaved rounds (median kept)")
    ap.add_argument("--warm-steps", type=int, default=15, help="training steps of the fresh U-Net")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    add_quick(ap)
    args = ap.parse_args()
    if args.quick:
        args.n, args.size, args.batch_size, args.warm_steps = 16, 128, 8, 3
    before = load()
    if args.threads or args.quick:  # --quick on a busy machine: 1 thread
        torch_threads(args.threads)

    device = resolve_device(args.device)
    if args.run:
        model, cfg = load_lung_run(args.run)
        model, model_size = model.to(device), cfg.size
        what = f"run {args.run} ({cfg.arch}, trained at {cfg.size} px)"
    else:
        model, model_size = warm_model(args.size, device, args.warm_steps), args.size
        what = "BasicUNet features (16, 32, 64, 128, 256, 16), briefly trained on phantoms"
    images, _ = phantoms(args.n, args.size)

    def full(batch: int):
        return lambda: sum(1 for _ in segment_cache(model, images, model_size, device, 0.5, batch))

    def net(batch: int):
        return lambda: [
            predict_batch(model, images[i : i + batch], model_size, device)
            for i in range(0, args.n, batch)
        ]

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    modes = {f"batched ({args.batch_size})": args.batch_size, "one at a time": 1}
    fns = {
        **{("predict", m): full(b) for m, b in modes.items()},
        **{("net", m): net(b) for m, b in modes.items()},
    }
    times = interleave(fns, args.repeat, warmup=1, sync=sync)  # type: ignore[arg-type]
    rates = {k: spread([args.n / t for t in v]) for k, v in times.items()}
    rows = [(m, rates[("predict", m)]["median"], rates[("net", m)]["median"]) for m in modes]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"lungs predict, {args.size} px cache, {args.n} images, {what}")
    print(f"device: {device} ({name}), torch threads {torch.get_num_threads()}")
    print(f"{'mode':<16}{'masks/s (predict)':>20}{'masks/s (net only)':>21}")
    for label, full_rate, net_rate in rows:
        print(f"{label:<16}{full_rate:>20.1f}{net_rate:>21.1f}")
    (_, b_full, b_net), (_, o_full, o_net) = rows
    print(f"{'ratio':<16}{b_full / o_full:>19.2f}x{b_net / o_net:>20.2f}x")
    emit(
        "lungs",
        {
            "device": str(device),
            "n": args.n,
            "size": args.size,
            "batch": args.batch_size,
            "rounds": args.repeat,
            "masks_s_batched": rates[("predict", rows[0][0])],
            "masks_s_one": rates[("predict", rows[1][0])],
            "speedup_batched_predict": b_full / o_full,
            "speedup_batched_net": b_net / o_net,
        },
        before,
    )


if __name__ == "__main__":
    main()
