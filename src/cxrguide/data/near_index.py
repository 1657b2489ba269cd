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
from concurrent.futures import Executor, ThreadPoolExecutor

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
_REFINE = [
    (ds, dx, dy) for ds in (0.99, 1.0, 1.01) for dx in (-0.01, 0, 0.01) for dy in (-0.01, 0, 0.01)
]


BLOCK = 1024  # films per radius-query block (and per fill of the views)
_GATHER = 8192  # hit views gathered per step of an exact-cosine block
# Below this many films the views are computed in process (a pool costs more than it saves).
PARALLEL_MIN = 256


def view_boxes() -> list[tuple[float, float, float, float]]:
    """(left, top, right, bottom) of each view as fractions of the side; the first is the
    centred, unscaled one."""
    half = 0.5 - MARGIN
    boxes = [(MARGIN, MARGIN, 1 - MARGIN, 1 - MARGIN)]
    for sx, sy, dx, dy in itertools.product(SCALES, SCALES, SHIFTS, SHIFTS):
        box = (
            0.5 + dx - half * sx,
            0.5 + dy - half * sy,
            0.5 + dx + half * sx,
            0.5 + dy + half * sy,
        )
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
    return (
        _sample(low, boxes, VIEW_SIDE).astype(np.float16),
        _sample(band, boxes, VIEW_SIDE).astype(np.float16),
    )


def _best_views(stack: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """For pairs (a[k], b[k]): the best cosine of one's full view with any view of the other,
    whether that view is a's (else b's), and its index."""
    ab, ba = _views_dot(stack, a, b), _views_dot(stack, b, a)
    a_side = ab.max(1) >= ba.max(1)
    view = np.where(a_side, ab.argmax(1), ba.argmax(1))
    return np.maximum(ab.max(1), ba.max(1)), a_side, view


def _views_dot(stack: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(pairs, n_views) float32: every view of a[k] against the full view of b[k], one product
    per film of ``a``: each film's views are converted from float16 once, not once per pair
    (a look-alike film has many pairs), and nothing of size pairs x views x 256 is built."""
    out = np.empty((len(a), stack.shape[1]), np.float32)
    order = np.argsort(a, kind="stable")
    for idx in np.split(order, np.flatnonzero(np.diff(a[order])) + 1):
        if len(idx):
            film = stack[a[idx[0]]].astype(np.float32)
            out[idx] = stack[b[idx], 0].astype(np.float32) @ film.T
    return out


def _sample(img: np.ndarray, boxes: list[tuple[float, ...]], side: int = FINE_SIDE) -> np.ndarray:
    """Each box of the float32 image resampled to ``side`` x ``side`` (bilinear), flattened,
    zero-mean and unit length: (len(boxes), side * side) float32."""

    im, n = Image.fromarray(img), img.shape[0]
    v = np.stack(
        [
            np.asarray(
                im.resize((side, side), Image.Resampling.BILINEAR, box=tuple(f * n for f in box))
            ).ravel()
            for box in boxes
        ]
    ).astype(np.float32)
    v -= v.mean(1, keepdims=True)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)


def _refined(box: tuple[float, ...]) -> list[tuple[float, ...]]:
    left, top, right, bottom = box
    cx, cy, hw, hh = (left + right) / 2, (top + bottom) / 2, (right - left) / 2, (bottom - top) / 2
    return [
        (cx + dx - hw * ds, cy + dy - hh * ds, cx + dx + hw * ds, cy + dy + hh * ds)
        for ds, dx, dy in _REFINE
    ]


def _chunks(pairs: np.ndarray, size: int) -> list[np.ndarray]:
    return [pairs[s : s + size] for s in range(0, len(pairs), size)]


def _views_block(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`views` of a block of thumbnails, stacked: one task and one pickle per block."""
    per = [views(t) for t in thumbs]
    return np.stack([p[0] for p in per]), np.stack([p[1] for p in per])


def _all_views(
    thumbs: np.ndarray, workers: int, pool: Executor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``low`` and ``band`` views of every thumbnail, (n, n_views, 256) float16 each.

    On ``workers`` processes when the set is large enough to pay for them (the views are most
    of the search's CPU time and each film's are independent: the same result in any order).
    Filled :data:`BLOCK` films at a time into arrays allocated once, so the peak is the views
    themselves (~38 KB per film), not twice that while a list of them is stacked."""
    n, n_views = len(thumbs), len(view_boxes())
    low = np.empty((n, n_views, VIEW_SIDE * VIEW_SIDE), np.float16)
    band = np.empty_like(low)
    step = max(1, min(64, n // (4 * max(workers, 1))))
    for lo in range(0, n, BLOCK):
        starts = range(lo, min(lo + BLOCK, n), step)
        blocks = [(np.asarray(thumbs[s : min(s + step, n)]),) for s in starts]
        parallel = n >= PARALLEL_MIN
        done = fork_map(_views_block, blocks, workers if parallel else 1, pool=pool)
        for s, (lw, bd) in zip(starts, done, strict=True):
            low[s : s + len(lw)], band[s : s + len(bd)] = lw, bd
    return low, band


def _close_pairs(
    low: np.ndarray, full: np.ndarray, proj: np.ndarray, queries: np.ndarray, workers: int
) -> np.ndarray:
    """(film, other film) rows, each film's full view within :data:`LOW_COS` of some view of
    the other: the KD-trees' radius query over the projections (a superset), then the exact
    cosine; a :data:`BLOCK` of query films at a time on ``workers`` threads (the tree and numpy
    release the GIL), so the hit lists and their cosines never exist for all films at once."""
    from scipy.spatial import cKDTree

    tree = cKDTree(proj, copy_data=False)  # float64 already: the tree keeps no second copy
    radius = float(np.sqrt(2 - 2 * LOW_COS))  # unit vectors: |x - y|^2 = 2 - 2 cos

    def block(lo: int) -> np.ndarray:
        hits = cKDTree(queries[lo : lo + BLOCK]).query_ball_tree(tree, radius)
        return _exact(low, full, hits, lo)

    with ThreadPoolExecutor(max(workers, 1)) as threads:
        return np.concatenate(list(threads.map(block, range(0, len(full), BLOCK))))


def _exact(low: np.ndarray, full: np.ndarray, hits: list[list[int]], lo: int) -> np.ndarray:
    """The pairs among one block's tree hits (view indices per query film ``lo + k``) whose
    exact cosine reaches :data:`LOW_COS`."""
    n_views, dims = low.shape[1], low.shape[2]
    lengths = np.fromiter((len(hs) for hs in hits), dtype=np.int64, count=len(hits))
    i = lo + np.repeat(np.arange(len(hits), dtype=np.int64), lengths)
    h = np.fromiter(itertools.chain.from_iterable(hits), dtype=np.int64, count=int(lengths.sum()))
    other = h // n_views != i  # a film's own views are no candidates
    i, h = i[other], h[other]
    flat, exact = low.reshape(-1, dims), np.empty(len(h), np.float32)
    buf16, buf32 = np.empty((_GATHER, dims), np.float16), np.empty((_GATHER, dims), np.float32)
    for s in range(0, len(h), _GATHER):  # gathered and converted in reused buffers (no faults)
        m = min(_GATHER, len(h) - s)
        np.take(flat, h[s : s + m], axis=0, out=buf16[:m])
        np.copyto(buf32[:m], buf16[:m])
        exact[s : s + m] = np.einsum("kd,kd->k", buf32[:m], full[i[s : s + m]])
    keep = exact >= LOW_COS
    return np.stack([i[keep], h[keep] // n_views], 1)


def _fine_match(moving: np.ndarray, still: np.ndarray, view: int) -> bool:
    """The ``fine`` check of one pair: ``moving``'s best view, refined, against ``still``."""
    from scipy import ndimage

    ref = _sample(ndimage.gaussian_filter(np.asarray(still, np.float32), 1.0), [view_boxes()[0]])
    blurred = ndimage.gaussian_filter(np.asarray(moving, np.float32), 1.0)
    return float((_sample(blurred, _refined(view_boxes()[view])) @ ref[0]).max()) >= FINE_COS


def _basis(full: np.ndarray, k: int) -> np.ndarray:
    """The top-k right singular vectors of ``full``, from its (dims, dims) Gram matrix: any
    orthonormal basis of that subspace gives the same candidates (module docstring)."""
    gram = full.T.astype(np.float64) @ full.astype(np.float64)
    return np.linalg.eigh(gram)[1][:, ::-1][:, :k].astype(np.float32)  # (dims, k)


def candidate_pairs(
    thumbs: np.ndarray, chunk: int = 20000, workers: int = 1, pool: Executor | None = None
) -> list[tuple[int, int]]:
    """Index pairs (i < j) of ``thumbs`` (n, side, side) that may be near duplicates, sorted.

    ``workers`` processes (``pool``, when given, else a pool of this call) compute the views
    and the fine checks; the radius queries and exact cosines run on ``workers`` threads, a
    :data:`BLOCK` of films each (numpy and the KD-tree release the GIL). Memory: the views
    (~38 KB per film), the tree (24 float64 per view: ~7 KB per film) and one block per thread.
    """
    from threadpoolctl import threadpool_limits

    if len(thumbs) < 2:
        return []
    # BLAS and LAPACK on one thread: their rounding would otherwise depend on the machine's
    # core count, and these small products gain nothing from threads (spinning ones cost ~1 CPU
    # s per 2,000 films on a busy machine); the parallel parts are the views and the queries
    with threadpool_limits(1):
        return _search(thumbs, chunk, workers, pool)


def _search(
    thumbs: np.ndarray,
    chunk: int,
    workers: int,
    pool: Executor | None,
) -> list[tuple[int, int]]:
    """:func:`candidate_pairs` of two or more thumbnails."""
    n = len(thumbs)
    low, band = _all_views(thumbs, workers, pool)
    n_views, dims = low.shape[1], low.shape[2]
    full = low[:, 0].astype(np.float32)
    k = min(PCA_DIMS, n, dims)
    basis = _basis(full, k)
    proj = np.empty((n * n_views, k), np.float64)  # the tree's own dtype: it keeps this copy
    flat = low.reshape(-1, dims)
    for s in range(0, len(flat), chunk):
        proj[s : s + chunk] = flat[s : s + chunk].astype(np.float32) @ basis
    close = _close_pairs(low, full, proj, full @ basis, workers)
    del proj
    if not len(close):
        return []
    pairs = np.unique(np.sort(close, axis=1), axis=0)
    ok = np.concatenate([_best_views(band, p[:, 0], p[:, 1])[0] for p in _chunks(pairs, chunk)])
    pairs = pairs[ok >= BAND_COS]
    if not len(pairs):
        return []
    parts = [_best_views(low, p[:, 0], p[:, 1]) for p in _chunks(pairs, chunk)]
    a_side = np.concatenate([part[1] for part in parts])
    view = np.concatenate([part[2] for part in parts])
    tasks = [
        (thumbs[a], thumbs[b], v) if a_has else (thumbs[b], thumbs[a], v)
        for (a, b), a_has, v in zip(pairs.tolist(), a_side.tolist(), view.tolist(), strict=True)
    ]
    matched = fork_map(_fine_match, tasks, workers, min_items=PARALLEL_MIN // 4, pool=pool)
    return [tuple(p) for p, ok in zip(pairs.tolist(), matched, strict=True) if ok]
