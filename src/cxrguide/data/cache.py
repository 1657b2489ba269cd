"""On-disk caches of decoded images (and later masks), one ``.npy`` row per manifest row.

Arrays are uint8 ``(N, size, size)`` opened as memory maps, so training reads a handful of pages
per batch and never decodes an original again; memory use does not grow with N.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_CACHE = "cache/images_{size}.npy"


def image_cache_path(prepared: str | Path, size: int) -> Path:
    return Path(prepared) / IMAGE_CACHE.format(size=size)


def create(path: Path, n: int, size: int) -> np.memmap:
    """A new cache file with its disk space reserved up front: a memory map over a sparse file
    dies with SIGBUS when the disk fills; reserving turns that into an OSError naming the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size))
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


def gather(src: np.ndarray, rows: list[int], dst_path: Path, chunk: int = 256) -> None:
    """Copy ``src[rows]`` into a new cache file, in chunks (constant memory)."""
    size = src.shape[1]
    dst = create(dst_path, len(rows), size)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        dst[start : start + len(part)] = src[part]
    dst.flush()
    del dst
