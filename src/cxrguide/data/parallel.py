"""Map a function over items on forked worker processes, in order, or in process when small.

Used by prepare's near-duplicate search (views, fine checks, confirmations): each item is
independent, so the result is the same for any worker count. ``ProcessPoolExecutor`` rather
than ``multiprocessing.Pool``: a worker killed by the OOM killer raises ``BrokenProcessPool``
(one line here) instead of hanging the parent forever.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from cxrguide.errors import CxrGuideError

T = TypeVar("T")


def fork_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` forked processes (they inherit the parent's memory maps)."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))


def fork_map(
    func: Callable[..., T], items: Sequence[Any], workers: int, *, min_items: int = 2,
    pool: ProcessPoolExecutor | None = None,
) -> list[T]:  # fmt: skip
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
        raise CxrGuideError(
            "a worker process died (killed for memory?); run the same command again with "
            "fewer --workers"
        ) from err
