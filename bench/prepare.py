"""Benchmark: `prepare` throughput, one process vs all cores, measured side by side.

Run: ``.venv/bin/python bench/prepare.py [--n 2000] [--size 256] [--cache-size 256]``. It draws
N synthetic phantoms once (``cxrguide synth``), then prepares them twice into fresh folders, with
``--workers 1`` and with all cores, prints images per second for each and the ratio, and checks
that both runs wrote the identical manifest and image cache.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import tempfile
import time
from pathlib import Path

from cxrguide.config import PrepareConfig, SynthConfig
from cxrguide.data.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images (>= 2000 for the issue)")
    parser.add_argument("--size", type=int, default=256, help="synthetic image side")
    parser.add_argument("--cache-size", type=int, default=256, help="prepare --size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from cxrguide.data.synthetic.generate import generate_dataset as generate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        generate(SynthConfig(out=tmp / "syn", n=args.n, size=args.size, seed=args.seed))
        print(f"synth: {args.n} images in {time.perf_counter() - t0:.1f} s")
        rates = {}
        for workers in (1, os.cpu_count() or 1):
            cfg = PrepareConfig(source=[f"synthetic={tmp / 'syn'}"], out=tmp / f"prep{workers}",
                                size=args.cache_size, seed=args.seed, workers=workers)  # fmt: skip
            t0 = time.perf_counter()
            result = prepare(cfg)
            seconds = time.perf_counter() - t0
            n_files = result.n_images + result.n_duplicates
            rates[workers] = n_files / seconds
            print(f"prepare --workers {workers}: {n_files} images in {seconds:.1f} s "
                  f"= {rates[workers]:.0f} img/s")  # fmt: skip
        one, many = rates[1], rates[max(rates)]
        same = filecmp.cmp(tmp / "prep1/manifest.csv", tmp / f"prep{max(rates)}/manifest.csv",
                           shallow=False) and filecmp.cmp(
            tmp / f"prep1/cache/images_{args.cache_size}.npy",
            tmp / f"prep{max(rates)}/cache/images_{args.cache_size}.npy", shallow=False)  # fmt: skip
        print(f"\n| workers | img/s |\n|---|---|\n| 1 | {one:.0f} |\n| {max(rates)} | {many:.0f} |")
        print(f"ratio all cores / one: {many / one:.2f}x; identical outputs: {same}")


if __name__ == "__main__":
    main()
