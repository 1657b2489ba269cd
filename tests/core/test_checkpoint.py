"""Checkpoints are read with weights_only=True: plain tensors and numbers, never code."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from checkpoint_payloads import payload_works, plant
from cxrguide.core.checkpoint import (
    UnsafeCheckpointError,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from cxrguide.errors import CxrGuideError


def test_a_planted_payload_is_refused_in_one_line_naming_the_file(tmp_path):
    ckpt, marker = tmp_path / "best.pt", tmp_path / "pwned"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 3
    plant(ckpt, marker)
    assert payload_works(ckpt, marker)  # the payload is real: the old load would run it
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(ckpt)
    assert not marker.exists()
    msg = str(err.value)
    assert msg.startswith(f"{ckpt}: refused") and "\n" not in msg


def test_garbage_is_one_line_too(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CxrGuideError, match=r"last\.pt: not a readable checkpoint"):
        load_checkpoint(bad)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    np.random.standard_normal()  # a cached gaussian in NumPy's legacy state
    torch.save({"rng": rng_state()}, tmp_path / "s.pt")
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(load_checkpoint(tmp_path / "s.pt")["rng"])
    got = (random.random(), np.random.standard_normal(3), torch.rand(3))
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    torch.testing.assert_close(got[2], expected[2], atol=0, rtol=0)
