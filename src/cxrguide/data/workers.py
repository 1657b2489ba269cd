"""One worker pool for decoding steps: a killed worker is one line, never a hang.

``multiprocessing.Pool`` replaces a worker that the OOM killer took and waits forever for the
task it was running; ``concurrent.futures.ProcessPoolExecutor`` notices the dead process and
fails every pending future with ``BrokenProcessPool``, which :func:`unordered` turns into one
line (exit 2). Fork start, so workers inherit the parent's memory maps and module state.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from cxrguide.errors import CxrGuideError

T = TypeVar("T")


class WorkerDiedError(CxrGuideError):
    """A worker process ended without answering (killed by a signal, the OOM killer, a crash)."""


def unordered(
    fn: Callable[[Any], T],
    items: Iterable[Any],
    workers: int,
    *,
    what: str,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    pool: ProcessPoolExecutor | None = None,
) -> Iterator[T]:
    """``fn(item)`` for every item on ``workers`` forked processes, results as they finish;
    on ``pool`` when given (left running for the caller's next step), else on a pool of its own."""
    own = pool is None
    if pool is None:
        pool = ProcessPoolExecutor(
            workers, mp_context=mp.get_context("fork"), initializer=initializer, initargs=initargs
        )
    try:
        pending = {pool.submit(fn, item) for item in items}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    except BrokenProcessPool:
        raise WorkerDiedError(
            f"{what}: a worker process died without finishing its images (killed, e.g. by the "
            "out-of-memory killer); run the same command again to resume, with fewer --workers "
            "if memory is short"
        ) from None
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)


def fork_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` forked processes (they inherit the parent's memory maps)."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))


def fork_map(
    func: Callable[..., T],
    items: Sequence[Any],
    workers: int,
    *,
    min_items: int = 2,
    pool: ProcessPoolExecutor | None = None,
) -> list[T]:
    """``[func(*item) for item in items]``, on ``pool`` (or ``workers`` new processes) when
    there are at least ``min_items`` items and more than one worker."""
    if workers <= 1 or len(items) < min_items:
        return [func(*item) for item in items]
    chunk = max(1, len(items) // (4 * workers))
    try:
        if pool is not None:
            return list(pool.map(func, *zip(*items, strict=True), chunksize=chunk))
        with fork_pool(workers) as own:
            return list(own.map(func, *zip(*items, strict=True), chunksize=chunk))
    except BrokenProcessPool as err:
        raise WorkerDiedError(
            "a worker process died (killed for memory?); run the same command again with "
            "fewer --workers"
        ) from err
