"""Model tests run torch single-threaded.

On a small machine shared with other test runs, torch's default of one OpenMP thread per core
makes threads spin against each other: a 64-pixel MobileNet forward measured 1-2 s instead of
10 ms. The previous setting is restored after each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_torch() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
