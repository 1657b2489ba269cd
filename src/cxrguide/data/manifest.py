"""The unified record set: duplicate detection, patient grouping, quotas and the 8:1:1 split.

Everything here works on plain lists and arrays so it is easy to test and never decodes pixels.
Duplicate detection is not quadratic: exact duplicates group by content hash, near duplicates are
found with multi-index hashing (a 256-bit dHash cut into ``distance + 1`` bands; by pigeonhole two
hashes within ``distance`` bits share at least one band exactly, so only bucket mates are
compared), plus the crop-tolerant thumbnail search of :mod:`cxrguide.data.near_index` (the dHash
misses crops of a few percent); every near candidate is confirmed by :func:`near_similarity`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage, optimize
from scipy.cluster.hierarchy import DisjointSet

from cxrguide.labels import SPLITS

HASH_BITS = 256
# The study's Table 3: (source kind, class) -> (train, val, test). Used by --quota paper, both as
# the cap and as the split targets, so full downloads reproduce the table.
PAPER_TABLE3: dict[tuple[str, str], tuple[int, int, int]] = {
    ("ieee8023", "Normal"): (14, 2, 2),
    ("ieee8023", "Pneumonia"): (133, 15, 17),
    ("ieee8023", "COVID-19"): (407, 46, 51),
    ("actualmed", "Normal"): (102, 12, 13),
    ("actualmed", "COVID-19"): (46, 6, 6),
    ("figure1", "Normal"): (1, 1, 1),
    ("figure1", "Pneumonia"): (0, 1, 1),
    ("figure1", "COVID-19"): (27, 4, 4),
    ("radiography", "COVID-19"): (177, 20, 22),
    ("rsna", "Normal"): (567, 63, 70),
    ("rsna", "Pneumonia"): (648, 72, 80),
}
PAPER_SOURCES = {source for source, _ in PAPER_TABLE3}
# Which copy of a duplicate survives: the most original publisher first (CRD and others
# re-publish ieee8023 and RSNA images).
SOURCE_PRIORITY = ("ieee8023", "actualmed", "figure1", "rsna", "radiography", "synthetic")


def dhash(img: np.ndarray, side: int = 16) -> np.ndarray:
    """256-bit difference hash of a gray image (any size; stretched, so resized copies match)."""

    arr = np.asarray(img, dtype=np.float32)
    if arr.max() > 1.0:
        arr = arr / 255.0
    small = Image.fromarray((arr * 255).astype(np.uint8)).resize(
        (side + 1, side), Image.Resampling.BOX
    )
    px = np.asarray(small, dtype=np.int16)
    return np.packbits(px[:, 1:] > px[:, :-1])


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(np.bitwise_xor(a, b)).sum())


def disjoint_set(n: int) -> DisjointSet:
    """scipy's union-find over the items ``0..n-1`` (``merge(a, b)``; ``ds[i]`` is i's group)."""
    return DisjointSet(range(n))


# --- confirming a dHash candidate -------------------------------------------------------------
# A 256-bit dHash within 12 bits also links distinct films that are merely positioned alike
# (measured: 52 false pairs among 10,000 distinct phantoms), so each candidate is confirmed by a
# stronger comparison before anything is dropped: 64 px thumbnails, rank-normalised (immune to
# contrast, gamma and bit depth), registered (x/y scale 0.85-1.18 and shift, Powell on blurred
# thumbnails: tolerates crops of a few percent), then the correlation of their fine detail
# (thumbnail minus its Gaussian blur, sigma 1.5 px) - capped by how well the blurred thumbnails
# align. Measured (bench/near_duplicates.py and README): near-copies of the 241 real sample films
# (half size, JPEG q70, 3% and 5% crops, gamma 0.7, contrast, 16-bit; 2,651 copies): 99.8%
# score >= 0.865, 99.6% >= 0.88. Distinct phantoms: among the 1,442 candidates that the
# crop-tolerant search (near_index) proposes on 10,000 of them, three pairs score 0.866-0.874,
# all three two films of one phantom patient (same anatomy); other pairs <= 0.861. 0.865 let
# those three through, so the threshold sits above them:
NEAR_SIMILARITY = 0.88
THUMB_SIDE = 64


def thumbnail(img: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """Rank-normalised ``side`` x ``side`` uint8 thumbnail (stretched, like the dHash)."""

    arr = np.asarray(img, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    small = np.asarray(Image.fromarray(arr).resize((side, side), Image.Resampling.BOX))
    ranks = np.empty(small.size, np.float64)
    ranks[np.argsort(small.ravel(), kind="stable")] = np.arange(small.size)
    return np.round(ranks / max(small.size - 1, 1) * 255).astype(np.uint8).reshape(small.shape)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _warp(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    sy, sx, ty, tx = p
    c = (t.shape[0] - 1) / 2
    offset = [c - (c + ty) / sy, c - (c + tx) / sx]
    return ndimage.affine_transform(t, [1 / sy, 1 / sx], offset=offset, order=1, mode="nearest")


def near_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Registered fine-detail correlation of two :func:`thumbnail` s (1: the same film)."""

    a, b = a.astype(np.float32) / 255, b.astype(np.float32) / 255
    m = slice(4, a.shape[0] - 4)  # borders move under registration
    ab, bb = ndimage.gaussian_filter(a, 1.0), ndimage.gaussian_filter(b, 1.0)
    fit = optimize.minimize(
        lambda p: -_corr(ab[m, m], _warp(bb, p)[m, m]),
        [1, 1, 0, 0],
        method="Powell",
        bounds=[(0.85, 1.18), (0.85, 1.18), (-6, 6), (-6, 6)],
        options={"xtol": 1e-3, "ftol": 1e-5},
    )
    wb = _warp(b, fit.x)
    detail = _corr(
        (a - ndimage.gaussian_filter(a, 1.5))[m, m], (wb - ndimage.gaussian_filter(wb, 1.5))[m, m]
    )
    return min(detail, (-float(fit.fun) - 0.9) * 10)  # both the detail and the shape must agree


def _close_pairs(words: np.ndarray, distance: int, block: int = 256) -> list[tuple[int, int]]:
    """Index pairs (a < c) of the rows of ``words`` (k, 4) uint64 within ``distance`` bits."""
    out: list[tuple[int, int]] = []
    for lo in range(0, len(words), block):
        part = words[lo : lo + block]
        d = np.bitwise_count(part[:, None, :] ^ words[None, :, :]).sum(axis=-1, dtype=np.int64)
        a, c = np.nonzero(d <= distance)
        a += lo
        keep = a < c
        out.extend(zip(a[keep].tolist(), c[keep].tolist(), strict=True))
    return out


def dhash_pairs(hashes: Sequence[np.ndarray | None], distance: int) -> list[tuple[int, int]]:
    """Item pairs (i < j) whose dHashes differ by at most ``distance`` bits, in the order the
    band buckets find them (a pair found by several bands is listed again)."""
    present = np.array([i for i, h in enumerate(hashes) if h is not None], dtype=np.intp)
    if distance < 0 or len(present) < 2:
        return []
    packed = np.stack([np.asarray(hashes[i], dtype=np.uint8) for i in present])
    words = np.ascontiguousarray(packed).view(np.uint64)  # 4 words: popcount per word
    bits = np.unpackbits(packed, axis=1)
    n_bands = distance + 1
    bounds = np.linspace(0, HASH_BITS, n_bands + 1).astype(int)
    out: list[tuple[int, int]] = []
    for b in range(n_bands):
        # items whose band b is identical form a bucket; only bucket mates are compared, all of
        # a bucket's pairs at once (phantoms and re-published sets fill some buckets densely:
        # one Python call per pair was the slowest serial step of prepare)
        band = np.packbits(bits[:, bounds[b] : bounds[b + 1]], axis=1).astype(np.int64)
        key = band @ (256 ** np.arange(band.shape[1], dtype=np.int64))
        order = np.argsort(key, kind="stable")  # equal keys keep ascending item order
        cuts = np.flatnonzero(np.diff(key[order])) + 1
        starts, stops = np.r_[0, cuts], np.r_[cuts, len(order)]
        for lo, hi in zip(starts[stops - starts > 1], stops[stops - starts > 1], strict=True):
            members = order[lo:hi]
            out.extend(
                (int(present[members[a]]), int(present[members[c]]))
                for a, c in _close_pairs(words[members], distance)
            )
    return out


def duplicate_groups(
    sha256: Sequence[str],
    hashes: Sequence[np.ndarray | None],
    distance: int,
    confirm: Callable[[int, int], bool] | None = None,
    extra_pairs: Iterable[tuple[int, int]] = (),
    prefetch: Callable[[list[tuple[int, int]]], None] | None = None,
    batch: int = 64,
) -> DisjointSet:
    """Union items that are byte-identical or whose dHashes differ by at most ``distance`` bits,
    or that ``extra_pairs`` proposes (:func:`cxrguide.data.near_index.candidate_pairs`); given
    ``confirm(i, j)``, near candidates are united only when it confirms them (see
    :func:`near_similarity`). A negative ``distance`` turns near-duplicate search off.

    Candidates are decided one by one in a fixed order, a pair already united never asked
    again. ``prefetch(pairs)`` is first handed, ``batch`` candidates at a time, those of them
    that are still undecided, so the caller can score them in parallel before ``confirm``
    reads its scores: the groups (and what ``confirm`` sees) do not depend on it."""
    n = len(sha256)
    uf = disjoint_set(n)
    first_by_sha: dict[str, int] = {}
    for i, digest in enumerate(sha256):
        if digest:
            j = first_by_sha.setdefault(digest, i)
            if j != i:
                uf.merge(i, j)
    if distance < 0:
        return uf
    refused: set[tuple[int, int]] = set()
    candidates = sorted((min(p), max(p)) for p in extra_pairs if p[0] != p[1])
    candidates += dhash_pairs(hashes, distance)
    for start in range(0, len(candidates), batch):
        part = candidates[start : start + batch]
        if prefetch is not None and confirm is not None:
            pending = {p for p in part if p not in refused and not uf.connected(*p)}
            if pending:
                prefetch(sorted(pending))
        for i, j in part:
            if uf.connected(i, j) or (i, j) in refused:
                continue
            if confirm is None or confirm(i, j):
                uf.merge(i, j)
            else:
                refused.add((i, j))  # another band may propose it again: confirm once
    return uf


def components(uf: DisjointSet, members: Iterable[int]) -> dict[int, list[int]]:
    """``members`` grouped by their set, groups in order of first appearance, members in order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i in members:
        groups[uf[i]].append(i)
    return groups


def keep_order_key(source: str, pixels: int, image_id: str) -> tuple[int, int, str]:
    """Sort key choosing the survivor of a duplicate group (lowest wins)."""
    rank = SOURCE_PRIORITY.index(source) if source in SOURCE_PRIORITY else len(SOURCE_PRIORITY)
    return (rank, -pixels, image_id)


def split_targets(n: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Image counts per split for a stratum of ``n`` (val and test rounded half up)."""
    val = int(n * ratios[1] + 0.5)
    test = int(n * ratios[2] + 0.5)
    return np.array([n - val - test, val, test])


@dataclass
class SplitGroup:
    """Images that must share a split (same patient, or linked through a duplicate)."""

    key: str  # stable id (smallest image_id in the group)
    strata: dict[tuple[str, str], int]  # (site, label) -> images
    fixed: str = ""  # a split imposed by the source

    @property
    def size(self) -> int:
        return sum(self.strata.values())


def assign_splits(
    groups: Sequence[SplitGroup],
    targets: dict[tuple[str, str], np.ndarray],
    seed: int,
) -> dict[str, str]:
    """Greedy grouped, stratified split: biggest groups first, each to the split it fills best.

    For every group, the split whose remaining room (summed over the group's strata, after
    placing it) is largest wins; ties go train > val > test. Singleton groups therefore land
    exactly on the targets; patient groups keep every stratum within a group's size of them.
    """
    rng = np.random.default_rng(seed)
    ordered = sorted(groups, key=lambda g: g.key)
    tiebreak = rng.permutation(len(ordered))
    order = sorted(range(len(ordered)), key=lambda i: (-ordered[i].size, tiebreak[i]))
    filled = {stratum: np.zeros(3, dtype=int) for stratum in targets}
    result: dict[str, str] = {}
    for i in order:
        group = ordered[i]
        if group.fixed:
            result[group.key] = group.fixed
            continue
        room = np.zeros(3)
        for stratum, count in group.strata.items():
            room += targets[stratum] - filled[stratum] - count
        choice = int(np.argmax(room))
        for stratum, count in group.strata.items():
            filled[stratum][choice] += count
        result[group.key] = SPLITS[choice]
    return result


def quota_caps(source: str, label: str) -> np.ndarray | None:
    """Table 3 per-split counts for ``--quota paper`` (zero for a class the study took none of)."""
    if source not in PAPER_SOURCES:
        return None
    return np.array(PAPER_TABLE3.get((source, label), (0, 0, 0)))
