"""The crop-tolerant near-duplicate search (full measurement: bench/near_duplicates.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cxrguide.config import SynthConfig
from cxrguide.data import manifest, near_index
from cxrguide.data.imaging import read_image
from cxrguide.data.synthetic.task_check import render_images

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _near_copies import KINDS, near_copies, sample_films  # noqa: E402


def _groups_found(images: list[np.ndarray]) -> tuple[object, list[tuple[int, int]]]:
    """What prepare does: dHash + crop-tolerant candidates, each confirmed by the thumbnails."""
    thumbs = np.stack([manifest.thumbnail(im) for im in images])
    hashes = [manifest.dhash(im) for im in images]
    extra = near_index.candidate_pairs(thumbs)

    def confirm(i: int, j: int) -> bool:
        return manifest.near_similarity(thumbs[i], thumbs[j]) >= manifest.NEAR_SIMILARITY

    return manifest.duplicate_groups([""] * len(images), hashes, 12, confirm, extra), extra


def _film(seed: int, size: int = 160) -> np.ndarray:
    """A smooth random film with fine texture (no two seeds alike)."""
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random((size, size)), 6) + 0.02 * gaussian_filter(
        rng.random((size, size)), 1
    )
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def test_view_boxes_start_with_the_centred_view_and_stay_inside():
    boxes = np.array(near_index.view_boxes())
    assert tuple(boxes[0]) == (near_index.MARGIN,) * 2 + (1 - near_index.MARGIN,) * 2
    assert len(boxes) == len({tuple(b) for b in boxes.tolist()}) == 37
    assert boxes.min() >= 0 and boxes.max() <= 1


def test_crops_the_dhash_misses_are_proposed_and_distinct_films_are_not():
    films = [_film(s) for s in range(12)]
    base = (films[0] * 255).round().astype(np.uint8)
    crop = base[8:-3, 5:-6]  # 5% / 3% / 4% / 2% off the sides, not resized back
    assert manifest.hamming(manifest.dhash(base), manifest.dhash(crop)) > 12
    uf, extra = _groups_found([*films, crop / 255.0])
    assert (0, 12) in extra
    assert uf.connected(0, 12)
    assert [len(g) for g in manifest.components(uf, range(13)).values()].count(1) == 11


def test_candidate_pairs_of_fewer_than_two_images_are_empty():
    assert near_index.candidate_pairs(np.zeros((1, 64, 64), np.uint8)) == []
    assert near_index.candidate_pairs(np.zeros((0, 64, 64), np.uint8)) == []


@pytest.fixture(scope="module")
def real_films(shared_data: Path) -> list[np.ndarray]:
    films = [read_image(p)[0] for p in sample_films(shared_data, every=20)]
    assert len(films) >= 10
    return films


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_near_copy_of_real_films_is_found(real_films, kind):
    """The real films and their copies of one kind as one set: each copy joins its original."""
    n = len(real_films)
    copies = [near_copies(img)[kind] for img in real_films]
    uf, _ = _groups_found(real_films + copies)
    missed = [i for i in range(n) if not uf.connected(i, n + i)]
    assert missed == []


def test_distinct_phantoms_are_never_linked():
    """Phantoms share one anatomy model, so they are far more alike than real films: the search
    proposes some, the confirmation must refuse every one."""

    images, _ = render_images(SynthConfig(n=300, size=96, seed=11, shortcut_test=0), workers=1)
    uf, extra = _groups_found(list(images))
    assert len(extra) < len(images)  # a handful of candidates, not all-against-all
    assert len({uf[i] for i in range(len(images))}) == len(images)


def test_views_on_worker_processes_give_the_same_candidates(monkeypatch):
    """prepare passes its worker count: the candidates must not depend on it."""
    monkeypatch.setattr(near_index, "PARALLEL_MIN", 8)
    films = [_film(s, 96) for s in range(10)]
    base = (films[0] * 255).round().astype(np.uint8)
    thumbs = np.stack([manifest.thumbnail(im) for im in [*films, base[5:-2, 3:-4] / 255.0]])
    one = near_index.candidate_pairs(thumbs, workers=1)
    assert (0, 10) in one
    assert near_index.candidate_pairs(thumbs, workers=2) == one


def test_view_products_per_film_match_the_pairwise_cosines():
    """_views_dot groups the pairs by film: same cosines as every pair on its own."""
    stack = np.random.default_rng(0).normal(size=(6, 37, 256)).astype(np.float16)
    a, b = np.array([3, 0, 3, 5, 0]), np.array([1, 2, 4, 3, 5])
    got = near_index._views_dot(stack, a, b)
    want = np.einsum("kvd,kd->kv", stack[a].astype(np.float32), stack[b, 0].astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
