"""Benchmark: `cxrguide synth` images per second at 256 px on one core (target >= 100).

Run: ``.venv/bin/python bench/synth.py [--quick] [--n 300] [--size 256] [--seed 0]``. Three
measurements,
side by side: drawing only (in memory, one process), drawing + writing every file (images,
masks, lesions, Darwin JSON, metadata; ``--workers 1``), and the same with all cores. Each is
given as wall-clock rate and, for the one-process runs, as rate per CPU-second of this process
(what one idle core would do; the machine is shared, so both are printed with the load).
The last line checks that one worker and all cores wrote byte-identical files.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import tempfile
import time
from pathlib import Path

from _common import add_quick, emit, load
from cxrguide.config import SynthConfig
from cxrguide.data.synthetic import generate_dataset, plan_dataset, render_case
from cxrguide.data.synthetic.generate import resolve_workers


def _timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    add_quick(parser)
    args = parser.parse_args()
    if args.quick:
        args.n = min(args.n, 80)
    before = load()
    cfg = SynthConfig(n=args.n, size=args.size, seed=args.seed, shortcut_test=0, workers=1)
    specs = plan_dataset(cfg)
    render_case(specs[0], args.size)  # warm-up (imports, font cache)
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    n = len(specs)

    rates: dict[str, float] = {}

    def report(what: str, wall: float, cpu: float | None = None) -> None:
        per_cpu = f", {n / cpu:7.1f} img/s per CPU-s" if cpu else ""
        print(f"{what:<24}: {n / wall:7.1f} img/s wall{per_cpu}")
        rates[what] = n / wall
        if cpu:
            rates[f"{what} per CPU-s"] = n / cpu

    report("draw only, 1 process", *_timed(lambda: [render_case(s, args.size) for s in specs]))
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        one_cfg = SynthConfig(**{**vars(cfg), "out": one})
        report("draw + write, 1 worker", *_timed(lambda: generate_dataset(one_cfg, False)))
        workers = resolve_workers(0)
        many_cfg = SynthConfig(**{**vars(cfg), "out": many, "workers": workers})
        report(
            f"draw + write, {workers} workers", _timed(lambda: generate_dataset(many_cfg, False))[0]
        )
        same = filecmp.cmp(one / "metadata.csv", many / "metadata.csv", shallow=False)
        for sub in ("images", "masks", "lesions", "annotations"):
            names = [p.name for p in (one / sub).iterdir()]
            same &= filecmp.cmpfiles(one / sub, many / sub, names, shallow=False)[0] == names
        print(f"identical output for 1 and {workers} workers: {same}")
    one, many = rates["draw + write, 1 worker"], rates[f"draw + write, {workers} workers"]
    emit(
        "synth",
        {
            "n": n,
            "size": args.size,
            "workers": workers,
            "img_s": {k.replace(", ", "_").replace(" ", "_"): v for k, v in rates.items()},
            "speedup_workers": many / one,
            "identical_outputs": bool(same),
        },
        before,
    )


if __name__ == "__main__":
    main()
