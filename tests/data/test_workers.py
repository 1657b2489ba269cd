"""data.workers.unordered: results of every item; a killed worker -> one line, not a hang."""

from __future__ import annotations

import os
import signal

import pytest

from cxrguide.data.workers import WorkerDiedError, fork_map, fork_pool, unordered


def _square(x: int) -> int:
    return x * x


def _dies_on_3(x: int) -> int:
    if x == 3:
        os._exit(1)  # a worker that ends without answering
    return x


def test_every_item_once():
    assert sorted(unordered(_square, range(20), 2, what="t")) == [x * x for x in range(20)]


def test_a_shared_pool_stays_up_for_the_next_step():
    """prepare forks one pool for all its steps: unordered must not shut it down."""
    with fork_pool(2) as pool:
        assert sorted(unordered(_square, range(6), 2, what="t", pool=pool)) == [0, 1, 4, 9, 16, 25]
        assert fork_map(_square, [(x,) for x in range(4)], 2, pool=pool) == [0, 1, 4, 9]


def test_a_dead_worker_is_one_line():
    signal.alarm(60)  # a hang fails the test
    try:
        with pytest.raises(WorkerDiedError, match=r"^lungs prepare: a worker process died") as err:
            list(unordered(_dies_on_3, range(8), 2, what="lungs prepare"))
    finally:
        signal.alarm(0)
    assert "\n" not in str(err.value)
