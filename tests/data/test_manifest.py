from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cxrguide.config import SynthConfig
from cxrguide.data import manifest
from cxrguide.data.imaging import read_image
from cxrguide.data.synthetic.task_check import render_images

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _near_copies import near_copies, sample_films  # noqa: E402


def _noise_image(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random((size, size)), sigma=size / 16)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def test_dhash_is_256_bits_and_stable_under_resize():
    img = _noise_image(1, 128)
    small = img[::2, ::2]
    h1, h2 = manifest.dhash(img), manifest.dhash(small)
    assert h1.shape == (32,) and h1.dtype == np.uint8
    assert manifest.hamming(h1, h2) <= 8  # well inside the default threshold of 12
    assert manifest.hamming(h1, manifest.dhash(_noise_image(2, 128))) > 60


def test_duplicate_groups_exact_and_near_but_not_different():
    imgs = [_noise_image(s) for s in range(50)]
    near = np.clip(imgs[3] + 0.01, 0, 1)
    hashes = [manifest.dhash(i) for i in imgs] + [manifest.dhash(near), manifest.dhash(imgs[7])]
    sha = [f"s{i}" for i in range(50)] + ["x", "s10"]  # item 51 is byte-identical to item 10
    uf = manifest.duplicate_groups(sha, hashes, distance=12)
    groups = [sorted(g) for g in manifest.components(uf, range(len(sha))).values() if len(g) > 1]
    assert sorted(groups) == [[3, 50], [7, 10, 51]] or sorted(groups) == [
        [3, 50],
        [7, 51],
        [10, 51],
    ]


def test_duplicate_groups_exact_links_items():
    sha = ["a", "b", "a", "c", "b"]
    uf = manifest.duplicate_groups(sha, [None] * 5, distance=12)
    groups = sorted(sorted(g) for g in manifest.components(uf, range(5)).values())
    assert groups == [[0, 2], [1, 4], [3]]


def test_near_duplicate_search_is_not_quadratic(monkeypatch):
    """Random hashes share no band: each item compares with ~no bucket mates."""
    rng = np.random.default_rng(0)
    hashes = [rng.integers(0, 256, 32, dtype=np.uint8) for _ in range(3000)]
    compared = 0
    real = manifest._close_pairs

    def counting(words, distance):
        nonlocal compared
        compared += len(words) * (len(words) - 1) // 2
        return real(words, distance)

    monkeypatch.setattr(manifest, "_close_pairs", counting)
    manifest.duplicate_groups([""] * 3000, hashes, distance=12)
    assert compared < 3000  # a quadratic search would make ~4.5 million comparisons


def test_close_pairs_match_pairwise_hamming():
    rng = np.random.default_rng(3)
    packed = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    packed[5] = packed[2]
    packed[9, :2] ^= 0xFF  # 16 bits from ...
    packed[17] = packed[9]
    packed[17, 0] ^= 0x0F  # ... and 4 bits from 9
    words = packed.view(np.uint64)
    for distance in (0, 4, 12, 130):
        want = [
            (a, c)
            for a in range(40)
            for c in range(a + 1, 40)
            if manifest.hamming(packed[a], packed[c]) <= distance
        ]
        assert sorted(manifest._close_pairs(words, distance, block=7)) == want


def test_duplicate_groups_chain_of_near_copies():
    """A drifts from B and B from C within the distance: all three are one group."""
    rng = np.random.default_rng(2)
    base = np.unpackbits(rng.integers(0, 256, 32, dtype=np.uint8))
    b, c = base.copy(), base.copy()
    b[:8] ^= 1
    c[:16] ^= 1  # 8 bits from b, 16 from base
    far = np.unpackbits(rng.integers(0, 256, 32, dtype=np.uint8))
    hashes = [np.packbits(x) for x in (base, b, c, far)]
    uf = manifest.duplicate_groups([""] * 4, hashes, distance=12)
    groups = sorted(sorted(g) for g in manifest.components(uf, range(4)).values())
    assert groups == [[0, 1, 2], [3]]


@pytest.mark.parametrize("n", [10, 11, 18, 57, 165, 504])
def test_split_targets_sum_and_ratio(n):
    t = manifest.split_targets(n)
    assert t.sum() == n
    assert abs(t[1] - n * 0.1) <= 0.5 and abs(t[2] - n * 0.1) <= 0.5


def _groups(sizes_by_stratum: dict, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = []
    for stratum, n in sizes_by_stratum.items():
        left, k = n, 0
        while left:
            size = min(left, int(rng.integers(1, 4)))
            groups.append(manifest.SplitGroup(key=f"{stratum}-{k}", strata={stratum: size}))
            left -= size
            k += 1
    return groups


def test_assign_splits_meets_targets_within_one_image_per_stratum():
    sizes = {("a", "Normal"): 57, ("a", "COVID-19"): 120, ("b", "Pneumonia"): 31}
    groups = _groups(sizes)
    targets = {s: manifest.split_targets(n) for s, n in sizes.items()}
    split = manifest.assign_splits(groups, targets, seed=3)
    for stratum, t in targets.items():
        got = np.zeros(3, dtype=int)
        for g in groups:
            if stratum in g.strata:
                got[["train", "val", "test"].index(split[g.key])] += g.strata[stratum]
        assert np.abs(got - t).max() <= 1, (stratum, got, t)


def test_assign_splits_is_deterministic_and_seed_dependent():
    sizes = {("a", "Normal"): 80}
    groups = _groups(sizes)
    targets = {s: manifest.split_targets(n) for s, n in sizes.items()}
    one = manifest.assign_splits(groups, targets, seed=1)
    assert one == manifest.assign_splits(list(reversed(groups)), targets, seed=1)
    assert one != manifest.assign_splits(groups, targets, seed=2)


def test_fixed_split_groups_keep_their_split():
    groups = [manifest.SplitGroup("x", {("s", "Normal"): 2}, fixed="shortcut_test")]
    groups += _groups({("s", "Normal"): 20})
    targets = {("s", "Normal"): manifest.split_targets(20)}
    assert manifest.assign_splits(groups, targets, seed=0)["x"] == "shortcut_test"


def test_paper_quota_reproduces_table3_totals():
    assert manifest.quota_caps("ieee8023", "COVID-19").tolist() == [407, 46, 51]
    assert manifest.quota_caps("radiography", "Normal").sum() == 0
    assert manifest.quota_caps("synthetic", "Normal") is None
    total = sum(sum(v) for v in manifest.PAPER_TABLE3.values())
    assert total == 2631  # the study's 2122 + 242 + 267


def _fixed_hashes() -> tuple[list[str], list]:
    """20 items: 6 base dHashes with 0-11 bits flipped, some exact copies, some unhashed."""
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, size=(6, 32), dtype=np.uint8)
    hashes, sha = [], []
    for i in range(20):
        bits = np.unpackbits(base[i % 6].copy())
        bits[rng.choice(256, size=int(rng.integers(0, 12)), replace=False)] ^= 1
        hashes.append(np.packbits(bits) if i % 7 else None)
        sha.append(f"s{i % 9}" if i % 4 else "")
    return sha, hashes


def test_duplicate_groups_are_those_of_the_former_union_find():
    """scipy's DisjointSet replaced a hand-written union-find: same groups, same order (the
    expected lists were produced by the union-find on this input)."""
    sha, hashes = _fixed_hashes()
    singles = [
        [0],
        [1, 10, 19],
        [2, 11],
        [3],
        [4],
        [5, 14],
        [6, 15],
        [7],
        [8],
        [9, 18],
        [12],
        [13],
        [16],
        [17],
    ]
    expected = {
        -1: singles,
        0: singles,
        3: [
            [0],
            [1, 10, 19],
            [2, 11],
            [3, 9, 18],
            [4],
            [5, 14],
            [6, 15],
            [7],
            [8],
            [12],
            [13],
            [16],
            [17],
        ],
        8: [[0], [1, 10, 16, 19], [2, 5, 11, 14, 17], [3, 6, 9, 12, 15, 18], [4], [7], [8], [13]],
    }
    for distance, groups in expected.items():
        found = manifest.duplicate_groups(sha, hashes, distance)
        assert list(manifest.components(found, range(20)).values()) == groups, distance
    subset = manifest.components(manifest.duplicate_groups(sha, hashes, 8), [19, 3, 11, 0, 7, 15])
    assert list(subset.values()) == [[19], [3, 15], [11], [0], [7]]


# --- near-duplicate confirmation (full measurement: bench/near_duplicates.py) ------------------


def test_copies_of_real_films_are_confirmed(shared_data: Path):
    missed = []
    films = sample_films(shared_data, every=20)
    for path in films:
        img, _ = read_image(path)
        ref = manifest.thumbnail(img)
        for name, copy in near_copies(img).items():
            sim = manifest.near_similarity(ref, manifest.thumbnail(copy))
            if sim < manifest.NEAR_SIMILARITY:
                missed.append((path.name, name, round(sim, 3)))
    assert len(films) >= 10 and missed == []


def test_the_most_alike_distinct_phantoms_are_not_confirmed():
    images, _ = render_images(SynthConfig(n=150, size=128, seed=11, shortcut_test=0), workers=1)
    thumbs = [manifest.thumbnail(im) for im in images]
    flat = np.stack([t.astype(np.float32).ravel() for t in thumbs])
    flat -= flat.mean(1, keepdims=True)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    sim = flat @ flat.T
    np.fill_diagonal(sim, -1)
    hardest = np.argsort(-np.triu(sim, 1).ravel())[:25]  # most alike pairs, not random ones
    scores = [
        manifest.near_similarity(thumbs[i], thumbs[j])
        for i, j in zip(*np.unravel_index(hardest, sim.shape), strict=True)
    ]
    assert max(scores) < manifest.NEAR_SIMILARITY


def test_confirmation_keeps_alike_films_apart_in_duplicate_groups():
    rng = np.random.default_rng(0)
    base = rng.random((64, 64)).astype(np.float32)
    other = np.clip(base + 0.35 * rng.standard_normal((64, 64)), 0, 1).astype(np.float32)
    hashes = [manifest.dhash(base), manifest.dhash(base), manifest.dhash(other)]
    thumbs = [manifest.thumbnail(x) for x in (base, base * 0.8, other)]
    calls = []

    def confirm(i: int, j: int) -> bool:
        calls.append((i, j))
        return manifest.near_similarity(thumbs[i], thumbs[j]) >= manifest.NEAR_SIMILARITY

    uf = manifest.duplicate_groups(["a", "b", "c"], hashes, 256, confirm)
    assert uf.connected(0, 1) and not uf.connected(0, 2)
    assert (0, 2) in calls or (1, 2) in calls  # the hash alone would have linked them
