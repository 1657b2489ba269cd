"""Crop-tolerant candidate search for near duplicates, over the confirmation thumbnails.

The 256-bit dHash misses copies cropped by a few percent (a 3% crop moves every gradient it
compares), so a second search proposes candidates from the rank-normalised thumbnails that
confirm them (:func:`cxrguide.data.manifest.thumbnail`). Each thumbnail gets a set of *views*:
its central 80% (:data:`MARGIN` cut from every side) resampled to 16 x 16, plus the same box
scaled by 0.95 and shifted by up to 2% of the side along x and y (:data:`SCALES`,
:data:`SHIFTS`: 37 views). A copy cropped by up to ~5% per side then looks like one of the
original's views, and the original like one of the copy's. Two images are a candidate when the
full view of one is close to some view of the other in two representations, each z-scored so
contrast and gamma do not matter:

- ``low``: blurred (sigma 1.5 px on the 64 px thumbnail): cosine >= :data:`LOW_COS`; found
  with a KD-tree over a 24-dimension PCA projection of every view (a projection never lengthens
  a distance, so the tree's radius query returns a superset that the exact cosine then filters:
  no pair above the threshold is lost, and nothing is compared all-against-all);
- ``band``: band-pass (blur 1.5 minus blur 6 px): cosine >= :data:`BAND_COS`, checked only on
  the ``low`` candidates;
- ``fine``: the pair's best view refined (scale 0.99-1.01, shift +-1%: 27 boxes) at 32 x 32
  from the thumbnail blurred by 1 px: cosine >= :data:`FINE_COS`.

Thresholds (measured on the near-copies of the 241 real sample films: half size, JPEG q70, 3%
and 5% crops centred, from a corner and uneven, gamma 0.7, contrast, 16-bit): copies score
``low`` >= 0.987, ``band`` >= 0.975 and ``fine`` >= 0.986. Distinct phantoms (all drawn from one
anatomy model, so far more alike than real films) pass ``low`` + ``band`` at about 1 pair in
1,600 and ``fine`` keeps ~2.5% of those. Every candidate then goes through the thumbnail
confirmation (:func:`cxrguide.data.manifest.near_similarity`) before anything is dropped.
"""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image

from cxrguide.data.workers import fork_map

MARGIN = 0.1
SCALES = (0.95, 1.0)
SHIFTS = (-0.02, 0.0, 0.02)
VIEW_SIDE = 16
LOW_COS = 0.98
BAND_COS = 0.96
FINE_COS = 0.984
FINE_SIDE = 32
PCA_DIMS = 24
_REFINE = [(ds, dx, dy) for ds in (0.99, 1.0, 1.01) for dx in (-0.01, 0, 0.01)
           for dy in (-0.01, 0, 0.01)]  # fmt: skip


# Below this many films the views are computed in process (a pool costs more than it saves).
PARALLEL_MIN = 256


def view_boxes() -> list[tuple[float, float, float, float]]:
    """(left, top, right, bottom) of each view as fractions of the side; the first is the
    centred, unscaled one."""
    half = 0.5 - MARGIN
    boxes = [(MARGIN, MARGIN, 1 - MARGIN, 1 - MARGIN)]
    for sx, sy, dx, dy in itertools.product(SCALES, SCALES, SHIFTS, SHIFTS):
        box = (0.5 + dx - half * sx, 0.5 + dy - half * sy, 0.5 + dx + half * sx,
               0.5 + dy + half * sy)  # fmt: skip
        if box not in boxes:
            boxes.append(box)
    return boxes


def views(thumb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``low`` and ``band`` views of one thumbnail: two (n_views, 256) float16 arrays of
    unit vectors (zero mean)."""
    from scipy import ndimage

    t = np.asarray(thumb, dtype=np.float32)
    low = ndimage.gaussian_filter(t, 1.5)
    band = low - ndimage.gaussian_filter(t, 6.0)
    boxes = view_boxes()
    return (_sample(low, boxes, VIEW_SIDE).astype(np.float16),
            _sample(band, boxes, VIEW_SIDE).astype(np.float16))  # fmt: skip


def _best_views(stack: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """For pairs (a[k], b[k]): the best cosine of one's full view with any view of the other,
    whether that view is a's (else b's), and its index."""
    s = stack.astype(np.float32)
    ab = np.einsum("kvd,kd->kv", s[a], s[b, 0])
    ba = np.einsum("kvd,kd->kv", s[b], s[a, 0])
    a_side = ab.max(1) >= ba.max(1)
    view = np.where(a_side, ab.argmax(1), ba.argmax(1))
    return np.maximum(ab.max(1), ba.max(1)), a_side, view


def _sample(img: np.ndarray, boxes: list[tuple[float, ...]], side: int = FINE_SIDE) -> np.ndarray:
    """Each box of the float32 image resampled to ``side`` x ``side`` (bilinear), flattened,
    zero-mean and unit length: (len(boxes), side * side) float32."""

    im, n = Image.fromarray(img), img.shape[0]
    v = np.stack([np.asarray(im.resize((side, side), Image.Resampling.BILINEAR,
                                       box=tuple(f * n for f in box))).ravel()
                  for box in boxes]).astype(np.float32)  # fmt: skip
    v -= v.mean(1, keepdims=True)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)


def _refined(box: tuple[float, ...]) -> list[tuple[float, ...]]:
    left, top, right, bottom = box
    cx, cy, hw, hh = (left + right) / 2, (top + bottom) / 2, (right - left) / 2, (bottom - top) / 2
    return [(cx + dx - hw * ds, cy + dy - hh * ds, cx + dx + hw * ds, cy + dy + hh * ds)
            for ds, dx, dy in _REFINE]  # fmt: skip


def _chunks(pairs: np.ndarray, size: int) -> list[np.ndarray]:
    return [pairs[s : s + size] for s in range(0, len(pairs), size)]


def _all_views(thumbs: np.ndarray, workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`views` of every thumbnail, on ``workers`` processes when the set is large enough to
    pay for them: the views are most of the search's time and each film's are independent
    (same result in any order, so prepare's output does not depend on the worker count)."""
    return fork_map(views, [(t,) for t in thumbs], workers, min_items=PARALLEL_MIN)


def _fine_match(moving: np.ndarray, still: np.ndarray, view: int) -> bool:
    """The ``fine`` check of one pair: ``moving``'s best view, refined, against ``still``."""
    from scipy import ndimage

    ref = _sample(ndimage.gaussian_filter(np.asarray(still, np.float32), 1.0), [view_boxes()[0]])
    blurred = ndimage.gaussian_filter(np.asarray(moving, np.float32), 1.0)
    return float((_sample(blurred, _refined(view_boxes()[view])) @ ref[0]).max()) >= FINE_COS


def candidate_pairs(
    thumbs: np.ndarray, chunk: int = 20000, workers: int = 1
) -> list[tuple[int, int]]:
    """Index pairs (i < j) of ``thumbs`` (n, side, side) that may be near duplicates, sorted."""
    from scipy.spatial import cKDTree

    n = len(thumbs)
    if n < 2:
        return []
    per = _all_views(np.asarray(thumbs), workers)
    low = np.stack([p[0] for p in per])
    band = np.stack([p[1] for p in per])
    del per
    n_views, dims = low.shape[1], low.shape[2]
    full = low[:, 0].astype(np.float32)
    k = min(PCA_DIMS, n, dims)
    # the top-k right singular vectors of ``full``, from its (dims, dims) Gram matrix: any
    # orthonormal basis of that subspace gives the same candidates (see the module docstring)
    gram = full.T.astype(np.float64) @ full.astype(np.float64)
    basis = np.linalg.eigh(gram)[1][:, ::-1][:, :k].astype(np.float32)  # (dims, k)
    flat = low.reshape(-1, dims)
    proj = np.concatenate([part.astype(np.float32) @ basis for part in _chunks(flat, chunk)])
    radius = float(np.sqrt(2 - 2 * LOW_COS))  # unit vectors: |x - y|^2 = 2 - 2 cos
    hits = cKDTree(full @ basis).query_ball_tree(cKDTree(proj), radius)
    lengths = np.fromiter((len(hs) for hs in hits), dtype=np.int64, count=n)
    i = np.repeat(np.arange(n, dtype=np.int64), lengths)
    h = np.fromiter(itertools.chain.from_iterable(hits), dtype=np.int64, count=int(lengths.sum()))
    other = h // n_views != i  # a film's own views are no candidates
    i, h = i[other], h[other]
    if not len(i):
        return []
    exact = np.einsum("kd,kd->k", flat[h].astype(np.float32), full[i])
    keep = exact >= LOW_COS
    pairs = np.unique(np.sort(np.stack([i[keep], h[keep] // n_views], 1), axis=1), axis=0)
    if not len(pairs):
        return []
    ok = np.concatenate([_best_views(band, p[:, 0], p[:, 1])[0] for p in _chunks(pairs, chunk)])
    pairs = pairs[ok >= BAND_COS]
    if not len(pairs):
        return []
    parts = [_best_views(low, p[:, 0], p[:, 1]) for p in _chunks(pairs, chunk)]
    a_side = np.concatenate([part[1] for part in parts])
    view = np.concatenate([part[2] for part in parts])
    tasks = [(thumbs[a], thumbs[b], v) if a_has else (thumbs[b], thumbs[a], v)
             for (a, b), a_has, v in zip(pairs.tolist(), a_side.tolist(), view.tolist(),
                                         strict=True)]  # fmt: skip
    matched = fork_map(_fine_match, tasks, workers, min_items=PARALLEL_MIN // 4)
    return [tuple(p) for p, ok in zip(pairs.tolist(), matched, strict=True) if ok]
