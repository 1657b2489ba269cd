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

from cxrguide.data.synthetic.generate import generate_dataset

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in benchmark output

from _common import add_quick, emit, load, spread  # noqa: E402
from cxrguide.config import PrepareConfig, SynthConfig  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="phantoms (--quick: 2000)")
    parser.add_argument("--size", type=int, default=256, help="synthetic image side")
    parser.add_argument("--cache-size", type=int, default=256, help="prepare --size")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (--quick: 3)")
    parser.add_argument("--workers", type=int, default=0, help="the many-worker setting (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    add_quick(parser)
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = min(args.n, 2000), min(args.repeats, 3)
    many = args.workers or max(2, os.cpu_count() or 1)
    before = load()
    print(f"# load {before}; {args.n} phantoms at {args.size} px -> cache {args.cache_size} px; "
          f"1 vs {many} workers, {args.repeats} interleaved rounds after a warm-up")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        generate_dataset(SynthConfig(out=tmp / "syn", n=args.n, size=args.size, seed=args.seed),
                         progress=False)  # fmt: skip
        print(f"synth: {time.perf_counter() - t0:.1f} s")
        # warm-up, untimed: imports, the fork path and the page cache of the code, on 30 films
        generate_dataset(SynthConfig(out=tmp / "warm", n=30, size=args.size, seed=args.seed + 1),
                         progress=False)  # fmt: skip
        for workers in (1, many):
            prepare(PrepareConfig(source=[f"synthetic={tmp / 'warm'}"], out=tmp / f"warm{workers}",
                                  size=args.cache_size, seed=args.seed, workers=workers))  # fmt: skip
        reference: Path | None = None
        identical = True
        times: dict[int, list[float]] = {1: [], many: []}
        cpu: dict[int, list[tuple[float, float]]] = {1: [], many: []}
        n_files = 0
        for r in range(1, args.repeats + 1):
            for workers in (1, many) if r % 2 else (many, 1):
                out = tmp / f"prep-{r}-{workers}"
                cfg = PrepareConfig(source=[f"synthetic={tmp / 'syn'}"], out=out,
                                    size=args.cache_size, seed=args.seed, workers=workers)  # fmt: skip
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
                print(f"round {r} --workers {workers}: {seconds:.2f} s "
                      f"({n_files / seconds:.0f} img/s), load {os.getloadavg()[0]:.1f}",
                      flush=True)  # fmt: skip
    one, all_ = spread(times[1]), spread(times[many])
    ratios = [a / b for a, b in zip(times[1], times[many], strict=True)]
    speedup = one["median"] / all_["median"]
    # CPU seconds: what the run would take on idle cores if only the parent's part were serial
    # (an idealised bound from CPU time, not a measurement; useful on a busy machine)
    cpu_one = statistics.median(a + b for a, b in cpu[1])
    parent, kids = (statistics.median(x[i] for x in cpu[many]) for i in (0, 1))
    ideal = cpu_one / (parent + kids / many)
    print(f"\n| workers | s (median) | img/s |\n|---|---|---|\n| 1 | {one['median']:.2f} | "
          f"{n_files / one['median']:.0f} |\n| {many} | {all_['median']:.2f} | "
          f"{n_files / all_['median']:.0f} |")  # fmt: skip
    print(f"speed-up {many} workers / 1: {speedup:.2f}x (per-round ratios "
          f"{min(ratios):.2f}-{max(ratios):.2f}); identical outputs: {identical}")  # fmt: skip
    print(f"CPU s: 1 worker {cpu_one:.2f}; {many} workers: parent {parent:.2f} + workers "
          f"{kids:.2f} -> idle-core bound {ideal:.2f}x (not measured)")  # fmt: skip
    emit("prepare", {
        "images": n_files, "workers": many, "rounds": args.repeats,
        "seconds_1": one, f"seconds_{many}": all_,
        "img_s_1": n_files / one["median"], f"img_s_{many}": n_files / all_["median"],
        "speedup": speedup, "round_ratio_min": min(ratios), "round_ratio_max": max(ratios),
        "round_ratio_median": statistics.median(ratios), "identical_outputs": identical,
        "cpu_s_1": cpu_one, f"cpu_s_{many}_parent": parent, f"cpu_s_{many}_workers": kids,
        "idle_core_bound_ratio": ideal,
    }, before)  # fmt: skip
    if not identical:
        raise SystemExit("prepare wrote different outputs with 1 and many workers")


if __name__ == "__main__":
    main()
