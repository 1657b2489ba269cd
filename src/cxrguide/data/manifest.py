"""The unified record set: duplicate detection, patient grouping, quotas and the 8:1:1 split.

Everything here works on plain lists and arrays so it is easy to test and never decodes pixels.
Duplicate detection is not quadratic: exact duplicates group by content hash, near duplicates are
found with multi-index hashing (a 256-bit dHash cut into ``distance + 1`` bands; by pigeonhole two
hashes within ``distance`` bits share at least one band exactly, so only bucket mates are
compared).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

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
    from PIL import Image

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


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def hamming_many(a: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Bit distances from packed hash ``a`` to each row of ``others`` (k, bytes), in one pass."""
    return _POPCOUNT[np.bitwise_xor(others, a)].sum(axis=1)


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicate_groups(
    sha256: Sequence[str], hashes: Sequence[np.ndarray | None], distance: int
) -> UnionFind:
    """Union items that are byte-identical or whose dHashes differ by at most ``distance`` bits."""
    n = len(sha256)
    uf = UnionFind(n)
    first_by_sha: dict[str, int] = {}
    for i, digest in enumerate(sha256):
        if digest:
            j = first_by_sha.setdefault(digest, i)
            if j != i:
                uf.union(i, j)
    if distance < 0:
        return uf
    n_bands = distance + 1
    bounds = np.linspace(0, HASH_BITS, n_bands + 1).astype(int)
    present = [i for i, h in enumerate(hashes) if h is not None]
    if not present:
        return uf
    packed = np.stack([np.asarray(hashes[i], dtype=np.uint8) for i in present])
    bits = np.unpackbits(packed, axis=1)
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for row, i in enumerate(present):
        # every earlier item sharing a band with i, compared in one vectorised pass (phantoms and
        # re-published sets put many images in the same buckets: one call per pair was the
        # slowest serial step of prepare)
        mates: set[int] = set()
        for b in range(n_bands):
            bucket = buckets[(b, bits[row, bounds[b] : bounds[b + 1]].tobytes())]
            mates.update(bucket)
            bucket.append(row)
        if mates:
            rows = np.fromiter(mates, dtype=np.intp, count=len(mates))
            for j in rows[hamming_many(packed[row], packed[rows]) <= distance]:
                uf.union(i, present[j])
    return uf


def components(uf: UnionFind, members: Iterable[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i in members:
        groups[uf.find(i)].append(i)
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
