"""On-disk caches of decoded images (and later masks), one ``.npy`` row per manifest row.

Arrays are uint8 ``(N, size, size)`` opened as memory maps, so training reads a handful of pages
per batch and never decodes an original again; memory use does not grow with N.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_CACHE = "cache/images_{size}.npy"


def image_cache_path(prepared: str | Path, size: int) -> Path:
    return Path(prepared) / IMAGE_CACHE.format(size=size)


def create(path: Path, n: int, size: int) -> np.memmap:
    """A new image cache file (``n`` rows of ``size`` x ``size`` uint8), space reserved."""
    return reserve_memmap(path, np.uint8, (n, size, size))


def reserve_memmap(path: Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` memory map with its disk space reserved up front: a memory map over a
    sparse file dies with SIGBUS when the disk fills; reserving turns that into an OSError
    naming the file (and the file is removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        if hasattr(os, "posix_fallocate"):
            with open(path, "r+b") as fh:
                os.posix_fallocate(fh.fileno(), 0, os.path.getsize(path))
    except OSError as err:
        path.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    return arr


def open_readonly(path: str | Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def open_writable(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r+")


def gather(
    src: np.ndarray,
    rows: list[int],
    dst_path: Path,
    chunk: int = 256,
    workers: int = 1,
    pool: Executor | None = None,
) -> None:
    """Copy ``src[rows]`` into a new cache file, in chunks (constant memory).

    With ``workers`` > 1 the output is split into contiguous row ranges copied by forked
    processes: on a fresh file most of the cost is page faults and the final write-back, which
    a single process would pay serially after a parallel decode (``prepare`` on 2 cores).
    On ``pool`` (``prepare``'s one pool) when given: ``src`` must then be a memory map of a
    file, which each worker opens by its name.
    """
    size = src.shape[1]
    dst = create(dst_path, len(rows), size)
    if workers <= 1 or len(rows) < 2 * chunk:
        _copy(src, rows, dst, 0, len(rows), chunk)
        return
    del dst  # the header is on disk; the workers map the file themselves
    bounds = np.linspace(0, len(rows), workers + 1).astype(int).tolist()
    if pool is not None:
        name = str(src.filename)  # type: ignore[attr-defined]
        spans = [
            (name, rows, str(dst_path), lo, hi, chunk)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        list(pool.map(_gather_span, spans))
        return
    _forked(
        _copy_part,
        [
            (src, rows, dst_path, lo, hi, chunk)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ],
    )


def _forked(target: Callable[..., None], jobs: list[tuple]) -> None:
    """``target(*job)`` in one forked process per job, all at once: a job's arguments (``src``
    may be a large in-memory array) are inherited by the fork, never pickled. The first
    exception a child raised is raised here (an OSError still names its file)."""
    ctx = mp.get_context("fork")
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_reporting, args=(target, job, errors)) for job in jobs]
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()
    if not errors.empty():
        raise errors.get()
    failed = [proc.exitcode for proc in procs if proc.exitcode]
    if failed:
        raise RuntimeError(f"a copy process exited with code {failed[0]}")


def _reporting(target: Callable[..., None], job: tuple, errors: Any) -> None:
    """Child side of :func:`_forked`: run the job, hand an exception back to the parent."""
    try:
        target(*job)
    except BaseException as err:  # the parent raises it; the child ends quietly
        errors.put(err)


def _copy_part(
    src: np.ndarray, rows: list[int], dst_path: Path, lo: int, hi: int, chunk: int
) -> None:
    _copy(src, rows, open_writable(dst_path), lo, hi, chunk)


def _gather_span(span: tuple[str, list[int], str, int, int, int]) -> None:
    """Pool worker: output rows ``lo..hi``, both caches opened by their file names."""
    src, rows, dst, lo, hi, chunk = span
    _copy(open_readonly(src), rows, open_writable(Path(dst)), lo, hi, chunk)


def _copy(src: np.ndarray, rows: list[int], dst: np.ndarray, lo: int, hi: int, chunk: int) -> None:
    for start in range(lo, hi, chunk):
        part = rows[start : min(start + chunk, hi)]
        dst[start : start + len(part)] = src[part]
    dst.flush()  # type: ignore[attr-defined]
    del dst
