"""Benchmark: near-duplicate detection, dHash alone vs dHash + thumbnail confirmation.

Run: ``.venv/bin/python bench/near_duplicates.py [--n 10000] [--size 128] [--seed 11]
[--shared ../shared/data] [--quick]``; ends with one JSON line of the figures. Two measurements side by side:

- false pairs: ``--n`` distinct synthetic phantoms (every film a different draw) through
  :func:`cxrguide.data.manifest.duplicate_groups` with the dHash alone and with the confirmation
  (target: 0 confirmed pairs); plus the confirmation score of the 50 most alike pairs by raw
  thumbnail correlation (the hardest negatives, which the dHash may not even propose);
- recall: every film of the real samples and its near-copies (half size + JPEG q70, 3% centred
  crop, 3% corner crop, gamma 0.7, linear contrast, 16-bit): share found by the dHash
  (<= 12 bits), share the confirmation accepts, and both together (target >= 99%).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _common import add_quick, emit, load
from cxrguide.config import SynthConfig
from cxrguide.data import manifest
from cxrguide.data.imaging import read_image
from cxrguide.data.synthetic.fairness import render_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from test_manifest import near_copies, sample_films  # noqa: E402


def false_pairs(n: int, size: int, seed: int) -> dict[str, float]:
    t0 = time.perf_counter()
    images, _ = render_images(SynthConfig(n=n, size=size, seed=seed, shortcut_test=0))
    hashes = [manifest.dhash(im) for im in images]
    thumbs = [manifest.thumbnail(im) for im in images]
    print(f"phantoms: {len(images)} at {size} px, seed {seed} ({time.perf_counter() - t0:.0f} s)")
    sha = [f"{i}" for i in range(len(images))]
    proposed: list[tuple[int, int]] = []

    def confirm(i: int, j: int) -> bool:
        proposed.append((i, j))
        return manifest.near_similarity(thumbs[i], thumbs[j]) >= manifest.NEAR_SIMILARITY

    plain = manifest.duplicate_groups(sha, hashes, 12)
    confirmed = manifest.duplicate_groups(sha, hashes, 12, confirm)
    linked = lambda uf: len(images) - len({uf[i] for i in range(len(images))})  # noqa: E731
    print(f"  dHash <= 12 alone: {linked(plain)} films dropped as duplicates "
          f"({len(proposed)} candidate pairs)")  # fmt: skip
    print(f"  dHash + confirmation: {linked(confirmed)} dropped")
    flat = np.stack([t.astype(np.float32).ravel() for t in thumbs])
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
    print(f"  50 most alike pairs (raw corr {best[-1][0]:.3f}-{best[0][0]:.3f}): confirmation "
          f"max {max(scores):.3f}, {sum(s >= manifest.NEAR_SIMILARITY for s in scores)} "
          f"accepted (threshold {manifest.NEAR_SIMILARITY})")  # fmt: skip
    return {"phantoms": len(images), "false_dropped_dhash_alone": linked(plain),
            "false_dropped_confirmed": linked(confirmed), "hardest_negative_score": max(scores)}  # fmt: skip


def recall(shared: Path, every: int = 1) -> dict[str, float]:
    found: dict[str, list[tuple[bool, bool]]] = {}
    films = sample_films(shared, every=every)
    for path in films:
        img, _ = read_image(path)
        h, t = manifest.dhash(img), manifest.thumbnail(img)
        for name, copy in near_copies(img).items():
            by_hash = manifest.hamming(h, manifest.dhash(copy)) <= 12
            sim = manifest.near_similarity(t, manifest.thumbnail(copy))
            found.setdefault(name, []).append((by_hash, sim >= manifest.NEAR_SIMILARITY))
    print(f"real near-copies of {len(films)} sample films: dHash found / confirmation accepts / "
          "both")  # fmt: skip
    for name, rows in found.items():
        r = np.array(rows)
        print(f"  {name:<13} {r[:, 0].mean():6.1%} {r[:, 1].mean():6.1%} {r.all(1).mean():6.1%}")
    r = np.array([x for rows in found.values() for x in rows])
    print(f"  {'all':<13} {r[:, 0].mean():6.1%} {r[:, 1].mean():6.1%} {r.all(1).mean():6.1%}")
    return {"films": len(films), "recall_dhash": float(r[:, 0].mean()),
            "recall_confirmation": float(r[:, 1].mean()), "recall_end_to_end": float(r.all(1).mean())}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data"
    )
    add_quick(p)
    args = p.parse_args()
    before = load()
    if args.quick:  # a smoke run: a few hundred phantoms, every 10th sample film
        args.n = min(args.n, 400)
    figures: dict[str, float] = {}
    if args.shared.is_dir():
        figures.update(recall(args.shared, every=10 if args.quick else 1))
    else:
        print(f"{args.shared}: no real sample films; recall not measured")
    figures.update(false_pairs(args.n, args.size, args.seed))
    emit("near_duplicates", figures, before)


if __name__ == "__main__":
    main()
