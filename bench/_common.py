"""Shared plumbing for the bench scripts (a helper, not a benchmark: its name starts with ``_``).

Every benchmark ends by printing one JSON line (:func:`emit`) so ``make bench`` output and the
acceptance loop can read the figures; ratios are named ``*speedup*`` or ``*ratio*``. Timings
that are compared are taken side by side, round-robin (:func:`interleave`), so a neighbour's
burst on the shared machine hits every variant alike, and reported as medians with their spread
(:func:`spread`). The load average before and after goes into every JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image


def add_quick(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: a smoke run that finishes in ~3 minutes on 2 cores",
    )


def load() -> dict[str, float]:
    """1/5/15-minute load averages and the core count (timings mean little without them)."""
    one, five, fifteen = os.getloadavg()
    return {
        "load1": round(one, 2),
        "load5": round(five, 2),
        "load15": round(fifteen, 2),
        "cpus": os.cpu_count() or 1,
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and extremes of repeated measurements."""
    xs = sorted(values)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {
        "median": statistics.median(xs),
        "q1": q1,
        "q3": q3,
        "min": xs[0],
        "max": xs[-1],
        "n": len(xs),
    }


def interleave(
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Wall seconds of each variant over ``repeats`` rounds, round-robin within each round.

    The order inside a round rotates, so no variant always runs first (right after a cache-cold
    neighbour) or last. ``warmup`` untimed rounds come first. ``sync`` (e.g. a CUDA
    synchronise) runs before each clock read.
    """
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if sync:
                sync()
            t0 = time.perf_counter()
            variants[name]()
            if sync:
                sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def rounded(obj: Any, digits: int = 4) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, digits) for v in obj]
    return obj


def emit(bench: str, figures: dict[str, Any], load_before: dict[str, float]) -> None:
    """The one JSON line a benchmark ends with: its figures plus the load before and after."""
    line = {"bench": bench, **rounded(figures), "load_before": load_before, "load_after": load()}
    print(json.dumps(line, separators=(",", ":")), flush=True)


def torch_threads(requested: int) -> int:
    """Set torch's CPU threads: ``requested`` when > 0, else 1 when the machine is busier than
    its cores (torch's default of one thread per core then spends most of its time waiting at
    OpenMP barriers, see bench/README.md), else torch's default. Returns the count in use."""

    if requested > 0:
        torch.set_num_threads(requested)
    elif os.getloadavg()[0] > (os.cpu_count() or 1):
        torch.set_num_threads(1)
    return torch.get_num_threads()


def film_png(side: int) -> bytes:
    """A seeded gray chest-film-like PNG (two dark lungs on a lighter body) for request loads."""

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side] / side
    lungs = sum(((xx - 0.5 - s * 0.2) / 0.15) ** 2 + ((yy - 0.45) / 0.3) ** 2 <= 1 for s in (-1, 1))
    img = np.clip(0.6 - 0.35 * lungs + rng.normal(0, 0.05, (side, side)), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
