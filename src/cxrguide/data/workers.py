"""One worker pool for decoding steps: a killed worker is one line, never a hang.

``multiprocessing.Pool`` replaces a worker that the OOM killer took and waits forever for the
task it was running; ``concurrent.futures.ProcessPoolExecutor`` notices the dead process and
fails every pending future with ``BrokenProcessPool``, which :func:`unordered` turns into one
line (exit 2). Fork start, so workers inherit the parent's memory maps and module state.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
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
) -> Iterator[T]:
    """``fn(item)`` for every item on ``workers`` forked processes, results as they finish."""
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"),
                               initializer=initializer, initargs=initargs)  # fmt: skip
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
        pool.shutdown(wait=True, cancel_futures=True)
