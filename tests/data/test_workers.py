"""data.workers.unordered: results of every item; a killed worker -> one line, not a hang."""

from __future__ import annotations

import os
import signal

import pytest

from cxrguide.data.workers import WorkerDiedError, unordered


def _square(x: int) -> int:
    return x * x


def _dies_on_3(x: int) -> int:
    if x == 3:
        os._exit(1)  # a worker that ends without answering
    return x


def test_every_item_once():
    assert sorted(unordered(_square, range(20), 2, what="t")) == [x * x for x in range(20)]


def test_a_dead_worker_is_one_line():
    signal.alarm(60)  # a hang fails the test
    try:
        with pytest.raises(WorkerDiedError, match=r"^lungs prepare: a worker process died") as err:
            list(unordered(_dies_on_3, range(8), 2, what="lungs prepare"))
    finally:
        signal.alarm(0)
    assert "\n" not in str(err.value)
