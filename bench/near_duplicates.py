"""Benchmark: near-duplicate detection: dHash alone, dHash + confirmation, and dHash + the
crop-tolerant thumbnail search + confirmation (what ``cxrguide prepare`` does).

Run: ``.venv/bin/python bench/near_duplicates.py [--n 10000] [--size 128] [--seed 11]
[--shared ../shared/data] [--every 1] [--skip-recall] [--quick]`` (``--n 0``: recall only); ends
with one JSON line of the figures. Two measurements:

- false pairs: ``--n`` distinct synthetic phantoms (every film a different draw) through
  :func:`cxrguide.data.manifest.duplicate_groups` with the dHash alone, with the confirmation,
  and with the crop-tolerant candidates (:mod:`cxrguide.data.near_index`) added (target: 0
  films dropped), with the time each search takes; plus the confirmation score of the 50 most
  alike pairs by raw thumbnail correlation (the hardest negatives);
- recall: for each kind of near-copy (``bench/_near_copies.py``: half size, JPEG q70, both, 3%
  and 5% crops centred / from a corner / uneven, gamma 0.7, linear contrast, 16-bit) the real
  sample films and their copies of that kind go through the same search as one set; a copy is
  found when it ends in its original's group (target >= 99% over all kinds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _common import add_quick, emit, load
from _near_copies import KINDS, near_copies, sample_films
from cxrguide.config import SynthConfig
from cxrguide.data import manifest, near_index
from cxrguide.data.imaging import read_image
from cxrguide.data.synthetic.task_check import render_images


def _search(
    thumbs: np.ndarray, hashes: list[np.ndarray], mode: str, memo: dict | None = None
) -> tuple[object, int, float]:
    """Duplicate groups of ``mode`` (dhash / confirmed / crop_tolerant), confirmations, seconds.
    ``memo`` shares confirmations between the modes of one set (the recall measure)."""
    calls = 0
    memo = {} if memo is None else memo

    def confirm(i: int, j: int) -> bool:
        nonlocal calls
        calls += 1
        if (i, j) not in memo:
            memo[i, j] = manifest.near_similarity(thumbs[i], thumbs[j]) >= manifest.NEAR_SIMILARITY
        return memo[i, j]

    t0 = time.perf_counter()
    extra = near_index.candidate_pairs(thumbs) if mode == "crop_tolerant" else []
    uf = manifest.duplicate_groups(
        [""] * len(thumbs), hashes, 12, None if mode == "dhash" else confirm, extra
    )
    return uf, calls, time.perf_counter() - t0


def false_pairs(n: int, size: int, seed: int) -> dict[str, float]:
    t0 = time.perf_counter()
    images, _ = render_images(SynthConfig(n=n, size=size, seed=seed, shortcut_test=0))
    hashes = [manifest.dhash(im) for im in images]
    thumbs = np.stack([manifest.thumbnail(im) for im in images])
    print(f"phantoms: {len(images)} at {size} px, seed {seed} ({time.perf_counter() - t0:.0f} s)")
    figures: dict[str, float] = {"phantoms": len(images), "phantom_size": size}
    for mode in ("dhash", "confirmed", "crop_tolerant"):
        uf, calls, secs = _search(thumbs, hashes, mode)
        dropped = len(images) - len({uf[i] for i in range(len(images))})
        print(
            f"  {mode:<14} {dropped} films dropped as duplicates, {calls} confirmations, "
            f"{secs:.1f} s"
        )
        figures[f"false_dropped_{mode}"] = dropped
        figures[f"seconds_{mode}"] = round(secs, 1)
        figures[f"confirmations_{mode}"] = calls
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    flat -= flat.mean(1, keepdims=True)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    best: list[tuple[float, int, int]] = []
    for start in range(0, len(flat), 1024):  # top pairs by raw correlation, chunked
        c = flat[start : start + 1024] @ flat.T
        for k in range(len(c)):
            c[k, : start + k + 1] = -1
        top = np.argpartition(-c.ravel(), 50)[:50]
        best += [(float(c.ravel()[t]), start + t // len(flat), t % len(flat)) for t in top]
    best = sorted(best, reverse=True)[:50]
    scores = [manifest.near_similarity(thumbs[i], thumbs[j]) for _, i, j in best]
    print(
        f"  50 most alike pairs (raw corr {best[-1][0]:.3f}-{best[0][0]:.3f}): confirmation "
        f"max {max(scores):.3f}, {sum(s >= manifest.NEAR_SIMILARITY for s in scores)} "
        f"accepted (threshold {manifest.NEAR_SIMILARITY})"
    )
    figures["hardest_negative_score"] = round(max(scores), 4)
    return figures


def recall(shared: Path, every: int = 1) -> dict[str, float]:
    films = sample_films(shared, every=every)
    originals, copies = [], {k: [] for k in KINDS}
    for path in films:
        img, _ = read_image(path)
        originals.append((manifest.thumbnail(img), manifest.dhash(img)))
        for name, copy in near_copies(img).items():
            copies[name].append((manifest.thumbnail(copy), manifest.dhash(copy)))
    n = len(films)
    print(
        f"real near-copies of {n} sample films (each kind searched with the originals): "
        "found by dHash + confirmation / with the crop-tolerant search"
    )
    found: dict[str, dict[str, np.ndarray]] = {}
    for name in KINDS:
        thumbs = np.stack([t for t, _ in originals + copies[name]])
        hashes = [h for _, h in originals + copies[name]]
        found[name], memo = {}, {}
        for mode in ("confirmed", "crop_tolerant"):
            uf = _search(thumbs, hashes, mode, memo)[0]
            found[name][mode] = np.array([uf.connected(i, n + i) for i in range(n)])
        print(
            f"  {name:<13} {found[name]['confirmed'].mean():6.1%} "
            f"{found[name]['crop_tolerant'].mean():6.1%}"
        )
    figures: dict[str, float] = {"films": n}
    for mode in ("confirmed", "crop_tolerant"):
        r = np.concatenate([found[k][mode] for k in KINDS])
        figures[f"recall_{mode}"] = round(float(r.mean()), 4)
        print(f"  all kinds, {mode}: {r.mean():.2%} of {len(r)} copies")
    figures.update(
        {f"recall_{k}": round(float(found[k]["crop_tolerant"].mean()), 4) for k in KINDS}
    )
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data"
    )
    p.add_argument("--skip-recall", action="store_true", help="only the false-pair measure")
    p.add_argument("--every", type=int, default=1, help="recall on every N-th sample film")
    add_quick(p)
    args = p.parse_args()
    before = load()
    if args.quick:  # a smoke run: a few hundred phantoms, every 10th sample film
        args.n = min(args.n, 400)
    figures: dict[str, float] = {}
    if args.skip_recall:
        pass
    elif args.shared.is_dir():
        figures.update(recall(args.shared, every=10 if args.quick else args.every))
    else:
        print(f"{args.shared}: no real sample films; recall not measured")
    if args.n > 1:  # --n 0: only the recall measure
        figures.update(false_pairs(args.n, args.size, args.seed))
    emit("near_duplicates", figures, before)


if __name__ == "__main__":
    main()
