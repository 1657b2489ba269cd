"""Benchmark: `prepare` throughput, one worker vs all cores, interleaved in one run.

Run: ``.venv/bin/python bench/prepare.py [--quick] [--n 4000] [--size 256] [--cache-size 256]
[--repeats 5] [--workers 0]``. It draws N synthetic phantoms once (``cxrguide synth``) into a
temporary folder, then prepares them ``--repeats`` times with ``--workers 1`` and with all cores
(``--workers``, 0 = every core), alternating (1, N, N, 1, ...) so a neighbour's burst hits both,
each into a fresh folder, after an untimed warm-up on 30 other films (imports, fork path). Printed:
images per
second per setting (median and spread), the speed-up (median one-worker time / median all-core
time: the one ``speedup`` figure; the spread of the per-round ratios is ``round_ratio_*``),
whether every run wrote byte-identical outputs (manifest, image cache, rejected, duplicates), and
the load average before and after. On a busy machine the wall-clock ratio says little, so the
CPU seconds are given too (one worker; the parent and the workers of the all-core run) with the
bound they imply on idle cores (``idle_core_bound_ratio``: parent CPU taken as serial, worker
CPU spread evenly; an estimate, not a measurement).

``--scale 2500,5000,10000,20000`` measures growth instead: one all-core prepare per size, of
phantoms drawn at ``--scale-size`` (64 px) and cached at that size, each in a forked child so
its peak resident memory is its own; printed per size: seconds, CPU seconds (parent,
workers), peak RSS (parent, largest worker), then the exponents of a least-squares fit
``t ~ n^a`` and ``rss ~ n^b`` (log-log; 1 = linear) in the JSON line.

``--index-memory 8000,16000`` measures the near-duplicate search's memory alone: for each N,
N distinct smooth random 64 px thumbnails (real films give few candidates, like these), then
``near_index.candidate_pairs`` in a forked child; printed: the child's peak RSS over its RSS
before the call, per film, and the slope between the sizes (the per-film cost without the
fixed part) with the extrapolation to 50,000 films.

The parallel part is the decode (read, SHA-256, decode, dHash, letterbox + resize) in a chunked
process pool whose workers write straight into the memory-mapped work cache; the scan,
de-duplication, split and the final gather stay serial and bound the speed-up (Amdahl).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrguide.data.synthetic.generate import generate_dataset

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in benchmark output

import multiprocessing as mp

from scipy.ndimage import gaussian_filter

from _common import add_quick, emit, load, spread  # noqa: E402
from cxrguide.config import PrepareConfig, SynthConfig  # noqa: E402
from cxrguide.data import near_index
from cxrguide.data.manifest import thumbnail
from cxrguide.data.prepare import prepare  # noqa: E402

OUTPUTS = ("manifest.csv", "rejected.csv", "duplicates.csv", "summary.json")


def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process and of its finished children (pool workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def same_outputs(a: Path, b: Path, cache_size: int) -> bool:
    names = [*OUTPUTS, f"cache/images_{cache_size}.npy"]
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def _scale_point(n: int, side: int, seed: int, workers: int, tmp: Path) -> dict:
    """Synth ``n`` phantoms and prepare them in a forked child; its time, CPU and peak RSS."""

    generate_dataset(
        SynthConfig(out=tmp / f"syn{n}", n=n, size=side, seed=seed, workers=workers), progress=False
    )
    queue = mp.get_context("fork").SimpleQueue()

    def child() -> None:
        cfg = PrepareConfig(
            source=[f"synthetic={tmp / f'syn{n}'}"],
            out=tmp / f"prep{n}",
            size=side,
            seed=seed,
            workers=workers,
        )
        t0 = time.perf_counter()
        result = prepare(cfg)
        seconds = time.perf_counter() - t0
        me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        queue.put(
            {
                "n": n,
                "seconds": seconds,
                "images": result.n_images,
                "duplicates": result.n_duplicates,
                "cpu_parent": me.ru_utime + me.ru_stime,
                "cpu_workers": kids.ru_utime + kids.ru_stime,
                "rss_parent_mb": me.ru_maxrss / 1024,
                "rss_worker_mb": kids.ru_maxrss / 1024,
                "load1": round(os.getloadavg()[0], 1),
            }
        )

    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"prepare of {n} phantoms failed (exit {proc.exitcode})")
    shutil.rmtree(tmp / f"syn{n}")
    shutil.rmtree(tmp / f"prep{n}")
    return queue.get()


def _exponent(ns: list[int], values: list[float]) -> float:
    """Slope of log(value) over log(n): the ``a`` of ``value ~ n^a``."""
    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def scale(sizes: list[int], side: int, seed: int, workers: int) -> None:
    before = load()
    print(f"# load {before}; prepare at {sizes} phantoms ({side} px), {workers} workers")
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            point = _scale_point(n, side, seed, workers, Path(tmp))
            points.append(point)
            print(
                f"{n} phantoms: {point['seconds']:.1f} s, CPU parent {point['cpu_parent']:.1f} "
                f"+ workers {point['cpu_workers']:.1f} s, peak RSS parent "
                f"{point['rss_parent_mb']:.0f} MB / worker {point['rss_worker_mb']:.0f} MB, "
                f"{point['duplicates']} duplicates, load {point['load1']}",
                flush=True,
            )
    ns = [p["n"] for p in points]
    fits = {}
    if len(points) >= 2:
        fits = {
            "time_exponent": _exponent(ns, [p["seconds"] for p in points]),
            "cpu_exponent": _exponent(ns, [p["cpu_parent"] + p["cpu_workers"] for p in points]),
            "rss_exponent": _exponent(ns, [p["rss_parent_mb"] for p in points]),
        }
    print(
        "\n| phantoms | s | CPU s (parent + workers) | peak RSS parent / worker (MB) | load |\n"
        "|---|---|---|---|---|"
    )
    for p in points:
        print(
            f"| {p['n']:,} | {p['seconds']:.1f} | {p['cpu_parent']:.1f} + {p['cpu_workers']:.1f}"
            f" | {p['rss_parent_mb']:.0f} / {p['rss_worker_mb']:.0f} | {p['load1']} |"
        )
    emit("prepare_scale", {"side": side, "workers": workers, "points": points, **fits}, before)


def _smooth_thumbs(n: int) -> np.ndarray:
    """``n`` distinct rank-normalised thumbnails of smooth random fields (seeded)."""

    def one(k: int) -> np.ndarray:
        r = np.random.default_rng(k)
        return thumbnail(
            gaussian_filter(r.random((64, 64)), 4) + 0.05 * gaussian_filter(r.random((64, 64)), 1)
        )

    return np.stack([one(k) for k in range(n)])


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))


def index_memory(sizes: list[int], workers: int) -> None:

    before = load()
    points = []
    for n in sizes:
        thumbs = _smooth_thumbs(n)
        queue = mp.get_context("fork").SimpleQueue()

        def child(thumbs=thumbs, queue=queue) -> None:
            base, t0 = _rss_kb(), time.perf_counter()
            pairs = near_index.candidate_pairs(thumbs, workers=workers)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            queue.put((peak - base, len(pairs), time.perf_counter() - t0))

        proc = mp.get_context("fork").Process(target=child)
        proc.start()
        proc.join()
        grown, n_pairs, seconds = queue.get()
        points.append(
            {
                "n": n,
                "peak_growth_mb": grown / 1024,
                "kb_per_film": grown / n,
                "pairs": n_pairs,
                "seconds": seconds,
                "load1": round(os.getloadavg()[0], 1),
            }
        )
        print(
            f"{n} films: peak RSS +{grown / 1024:.0f} MB ({grown / n:.1f} KB per film), "
            f"{n_pairs} candidate pairs, {seconds:.0f} s, load {points[-1]['load1']}",
            flush=True,
        )
    fit = {}
    if len(points) >= 2:
        a, b = points[0], points[-1]
        slope = (b["peak_growth_mb"] - a["peak_growth_mb"]) * 1024 / (b["n"] - a["n"])
        fixed = a["peak_growth_mb"] - slope * a["n"] / 1024
        fit = {
            "kb_per_film_slope": slope,
            "fixed_mb": fixed,
            "extrapolated_50000_mb": fixed + slope * 50000 / 1024,
        }
        print(
            f"slope {slope:.1f} KB per film + {fixed:.0f} MB -> 50,000 films: "
            f"{fit['extrapolated_50000_mb']:.0f} MB (extrapolated)"
        )
    emit("near_index_memory", {"workers": workers, "points": points, **fit}, before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="phantoms (--quick: 2000)")
    parser.add_argument("--size", type=int, default=256, help="synthetic image side")
    parser.add_argument("--cache-size", type=int, default=256, help="prepare --size")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (--quick: 3)")
    parser.add_argument("--workers", type=int, default=0, help="the many-worker setting (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scale",
        default="",
        help="comma-separated phantom counts: time and "
        "peak memory per size and their fitted exponents (--quick: 500,1000)",
    )
    parser.add_argument("--scale-size", type=int, default=64, help="phantom side for --scale")
    parser.add_argument(
        "--index-memory",
        default="",
        help="comma-separated film counts: peak "
        "memory of the near-duplicate search alone (--quick: 1500,3000)",
    )
    add_quick(parser)
    args = parser.parse_args()
    if args.index_memory:
        sizes = [int(x) for x in args.index_memory.split(",")]
        if args.quick:
            sizes = [min(x, 1500 * (k + 1)) for k, x in enumerate(sizes[:2])]
        index_memory(sizes, args.workers or max(2, os.cpu_count() or 1))
        return
    if args.scale:
        sizes = [int(x) for x in args.scale.split(",")]
        if args.quick:
            sizes = [min(x, 1000) for x in sizes[:2]]
        scale(sizes, args.scale_size, args.seed, args.workers or max(2, os.cpu_count() or 1))
        return
    if args.quick:
        args.n, args.repeats = min(args.n, 2000), min(args.repeats, 3)
    many = args.workers or max(2, os.cpu_count() or 1)
    before = load()
    print(
        f"# load {before}; {args.n} phantoms at {args.size} px -> cache {args.cache_size} px; "
        f"1 vs {many} workers, {args.repeats} interleaved rounds after a warm-up"
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        generate_dataset(
            SynthConfig(out=tmp / "syn", n=args.n, size=args.size, seed=args.seed), progress=False
        )
        print(f"synth: {time.perf_counter() - t0:.1f} s")
        # warm-up, untimed: imports, the fork path and the page cache of the code, on 30 films
        generate_dataset(
            SynthConfig(out=tmp / "warm", n=30, size=args.size, seed=args.seed + 1), progress=False
        )
        for workers in (1, many):
            prepare(
                PrepareConfig(
                    source=[f"synthetic={tmp / 'warm'}"],
                    out=tmp / f"warm{workers}",
                    size=args.cache_size,
                    seed=args.seed,
                    workers=workers,
                )
            )
        reference: Path | None = None
        identical = True
        times: dict[int, list[float]] = {1: [], many: []}
        cpu: dict[int, list[tuple[float, float]]] = {1: [], many: []}
        n_files = 0
        for r in range(1, args.repeats + 1):
            for workers in (1, many) if r % 2 else (many, 1):
                out = tmp / f"prep-{r}-{workers}"
                cfg = PrepareConfig(
                    source=[f"synthetic={tmp / 'syn'}"],
                    out=out,
                    size=args.cache_size,
                    seed=args.seed,
                    workers=workers,
                )
                c0 = cpu_seconds()
                t0 = time.perf_counter()
                result = prepare(cfg)
                seconds = time.perf_counter() - t0
                c1 = cpu_seconds()
                n_files = result.n_images + result.n_duplicates + result.n_rejected
                if reference is None:
                    reference = out
                else:
                    identical &= same_outputs(reference, out, args.cache_size)
                    shutil.rmtree(out)
                times[workers].append(seconds)
                cpu[workers].append((c1[0] - c0[0], c1[1] - c0[1]))
                print(
                    f"round {r} --workers {workers}: {seconds:.2f} s "
                    f"({n_files / seconds:.0f} img/s), load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    one, all_ = spread(times[1]), spread(times[many])
    ratios = [a / b for a, b in zip(times[1], times[many], strict=True)]
    speedup = one["median"] / all_["median"]
    # CPU seconds: what the run would take on idle cores if only the parent's part were serial
    # (an idealised bound from CPU time, not a measurement; useful on a busy machine)
    cpu_one = statistics.median(a + b for a, b in cpu[1])
    parent, kids = (statistics.median(x[i] for x in cpu[many]) for i in (0, 1))
    ideal = cpu_one / (parent + kids / many)
    print(
        f"\n| workers | s (median) | img/s |\n|---|---|---|\n| 1 | {one['median']:.2f} | "
        f"{n_files / one['median']:.0f} |\n| {many} | {all_['median']:.2f} | "
        f"{n_files / all_['median']:.0f} |"
    )
    print(
        f"speed-up {many} workers / 1: {speedup:.2f}x (per-round ratios "
        f"{min(ratios):.2f}-{max(ratios):.2f}); identical outputs: {identical}"
    )
    print(
        f"CPU s: 1 worker {cpu_one:.2f}; {many} workers: parent {parent:.2f} + workers "
        f"{kids:.2f} -> idle-core bound {ideal:.2f}x (not measured)"
    )
    emit(
        "prepare",
        {
            "images": n_files,
            "workers": many,
            "rounds": args.repeats,
            "seconds_1": one,
            f"seconds_{many}": all_,
            "img_s_1": n_files / one["median"],
            f"img_s_{many}": n_files / all_["median"],
            "speedup": speedup,
            "round_ratio_min": min(ratios),
            "round_ratio_max": max(ratios),
            "round_ratio_median": statistics.median(ratios),
            "identical_outputs": identical,
            "cpu_s_1": cpu_one,
            f"cpu_s_{many}_parent": parent,
            f"cpu_s_{many}_workers": kids,
            "idle_core_bound_ratio": ideal,
        },
        before,
    )
    if not identical:
        raise SystemExit("prepare wrote different outputs with 1 and many workers")


if __name__ == "__main__":
    main()
