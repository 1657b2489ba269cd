"""The decode pass of ``cxrguide prepare``: every record read once, in parallel, into the
resumable work cache (``.work/``: the cache-sized pixels, the near-duplicate thumbnails and a
log row per record). Pool workers write straight into the memory-mapped caches, so no image is
pickled back to the parent; a killed run decodes only what its log does not hold yet."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import Executor
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cxrguide.config import PrepareConfig
from cxrguide.data import cache, manifest
from cxrguide.data.imaging import read_film, to_uint8
from cxrguide.data.sources import SourceRecord
from cxrguide.data.workers import unordered
from cxrguide.errors import ImageReadError

DECODED_COLUMNS = [
    "idx",
    "ok",
    "reason",
    "sha256",
    "dhash",
    "width",
    "height",
    "format",
    "view",
    "warnings",
]
THUMBS = "thumbs.npy"  # in .work/: near-duplicate thumbnails, row = record index


def decode(
    task: tuple[int, str, int, dict[str, Any]],
) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """Worker: read one file, hash its bytes and pixels; return the cache-sized uint8 image and
    the thumbnail that confirms near duplicates. ``task``: index, path, cache side, the
    reader's limits (:attr:`cxrguide.config.ReaderConfig.limits`)."""

    idx, path, size, limits = task
    row = {
        "idx": idx,
        "ok": 0,
        "reason": "",
        "sha256": "",
        "dhash": "",
        "width": 0,
        "height": 0,
        "format": "",
        "view": "",
        "warnings": "",
    }
    try:
        img, square, info = read_film(path, target=size, square=size, **limits)
        with open(path, "rb") as fh:
            row["sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
    except ImageReadError as err:
        row["reason"] = err.reason
        return row, None, None
    except OSError as err:
        row["reason"] = f"cannot read file ({err.strerror or err})"
        return row, None, None
    row.update(
        ok=1,
        width=info.width,
        height=info.height,
        format=info.format,
        view=info.view,
        warnings=";".join(info.warning_codes),
    )
    row["dhash"] = manifest.dhash(img).tobytes().hex()
    return row, to_uint8(square), manifest.thumbnail(img)


def _decode_chunk(caches: tuple[str, str], tasks: list[tuple[int, str, int, dict]]) -> list[dict]:
    """Pool worker: decode a chunk straight into the memory-mapped work cache (``caches``: the
    pixel and thumbnail files, opened on the first chunk: prepare's one pool is forked before
    they exist).

    Only the small log rows travel back to the parent: pickling every 64-256 kB image through
    a pipe and copying it in the parent kept one core busy with bookkeeping (1.45x on 2 cores).
    Pixels are written before the row is returned, so a logged row is always cached; a chunk
    lost to a kill is simply decoded again on resume.
    """
    pixels, thumbs = _open_work_caches(caches)
    return [_store(decode(task), pixels, thumbs) for task in tasks]


@lru_cache(maxsize=1)
def _open_work_caches(caches: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The work caches' memory maps, opened once per process (one prepare's pair at a time)."""
    pixels, thumbs = (cache.open_writable(Path(c)) for c in caches)
    return pixels, thumbs


def _store(decoded: tuple, pixels: np.ndarray, thumbs: np.ndarray) -> dict:
    """Pixels and thumbnail into the work caches, first: a logged row is always cached."""
    row, arr, thumb = decoded
    if arr is not None:
        pixels[row["idx"]] = arr
        thumbs[row["idx"]] = thumb
    return row


def worker_count(cfg: PrepareConfig) -> int:
    """Processes for prepare's parallel steps: ``cfg.workers``, else every CPU."""
    return cfg.workers or os.cpu_count() or 1


def chunks(todo: list, workers: int) -> list[list]:
    """Chunks small enough to balance the pool (>= 8 per worker; <= 16 items, so the last one
    finishes soon after the others), large enough to amortise the IPC."""
    size = max(1, min(16, len(todo) // (8 * workers) or 1))
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def _fingerprint(cfg: PrepareConfig, records: list[SourceRecord]) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            # "intensity-v2": the one intensity rule (full resolution, padding, 8-bit /255)
            [cfg.size, cfg.reader.limits, "thumbs-v1", "intensity-v2"]
        ).encode()
    )
    for r in records:
        h.update(f"{r.source}|{r.root}|{r.path}\n".encode())
    return h.hexdigest()


def decode_all(
    cfg: PrepareConfig, records: list[SourceRecord], work: Path, pool: Executor | None = None
) -> list[dict]:
    """Decode every record into ``work``; resumable (rows already decoded are skipped)."""
    fingerprint = _fingerprint(cfg, records)
    fp_file, log_file, arr_file = work / "fingerprint", work / "decoded.csv", work / "decoded.npy"
    if fp_file.exists() and fp_file.read_text() != fingerprint:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    done: dict[int, dict] = {}
    if fp_file.exists() and log_file.exists() and arr_file.exists():
        with log_file.open(newline="") as fh:
            for row in csv.DictReader(fh):
                done[int(row["idx"])] = row
        pixels = cache.open_writable(arr_file)
        thumbs = cache.open_writable(work / THUMBS)
    else:
        pixels = cache.create(arr_file, max(len(records), 1), cfg.size)
        thumbs = cache.create(work / THUMBS, max(len(records), 1), manifest.THUMB_SIDE)
        with log_file.open("w", newline="") as fh:
            csv.writer(fh).writerow(DECODED_COLUMNS)
        fp_file.write_text(fingerprint)
    todo = [
        (i, str(r.file), cfg.size, cfg.reader.limits)
        for i, r in enumerate(records)
        if i not in done
    ]
    workers = worker_count(cfg)
    with log_file.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=DECODED_COLUMNS)
        bar = tqdm(total=len(records), initial=len(done), desc="decode", unit="img", disable=None)
        for rows in _decoded_rows(
            todo, workers, (str(arr_file), str(work / THUMBS)), pixels, thumbs, pool
        ):
            writer.writerows(rows)
            fh.flush()
            for row in rows:
                done[row["idx"]] = {k: str(v) for k, v in row.items()}
            bar.update(len(rows))
        bar.close()
    # No msync here: every process wrote through a shared mapping, so the pixels are in the page
    # cache for the gather and survive a killed process; syncing 100+ MB to disk was serial time.
    del pixels, thumbs
    return [done[i] for i in range(len(records))]


def _decoded_rows(
    todo: list,
    workers: int,
    caches: tuple[str, str],
    pixels: np.ndarray,
    thumbs: np.ndarray,
    pool: Executor | None,
) -> Iterator[list[dict]]:
    """Log rows of decoded items (a chunk per pool result, one by one in process), each one's
    pixels already in the work cache. A killed worker: one line (``data.workers``), no hang."""
    if workers > 1 and len(todo) > 1:
        yield from unordered(
            partial(_decode_chunk, caches),
            chunks(todo, workers),
            workers,
            what="prepare",
            pool=pool,
        )
        return
    for task in todo:
        yield [_store(decode(task), pixels, thumbs)]
