"""The Stage I feature cache fills only the rows asked for, and later calls fill the rest."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.files import os_error_message
from cxrguide.models.classifier import CxrClassifier
from cxrguide.models.zoo import create_model
from cxrguide.training import features

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Images the body ran on, batch by batch."""
    seen: list[int] = []
    real = CxrClassifier.forward_features

    def counting(self, x):
        seen.append(len(x))
        return real(self, x)

    monkeypatch.setattr(CxrClassifier, "forward_features", counting)
    return seen


def test_stage1_rows_then_the_rest_match_one_full_pass(tiny_prepared, counted):
    prepared = Prepared.open(tiny_prepared)
    model = create_model("mobilenet_v2", "none", seed=0).freeze_body()
    cpu = torch.device("cpu")
    used = features.stage1_rows(prepared)
    n = len(prepared.manifest)
    assert 0 < len(used) < n and set(prepared.rows("test")).isdisjoint(used)

    part = np.array(
        features.pooled_features(
            model, prepared, SIZE, cpu, rows=used, batch_size=8, progress=False
        )
    )
    assert sum(counted) == len(used)  # the test split never went through the body
    assert np.abs(part[used]).sum(1).min() > 0
    assert np.abs(part[prepared.rows("test")]).sum() == 0

    counted.clear()
    again = features.pooled_features(model, prepared, SIZE, cpu, rows=used, progress=False)
    assert counted == [] and np.array_equal(np.asarray(again)[used], part[used])

    full = np.array(
        features.pooled_features(model, prepared, SIZE, cpu, batch_size=8, progress=False)
    )
    assert sum(counted) == n - len(used)  # only the missing rows ran
    finals = [p for p in (prepared.root / "features").glob("*.npy") if ".partial" not in p.name]
    assert len(finals) == 1 and not list((prepared.root / "features").glob("*.rows"))
    fresh_model = create_model("mobilenet_v2", "none", seed=0).freeze_body()
    with torch.no_grad():
        x = torch.stack([prepared_item(prepared, r) for r in range(n)])
        expected = fresh_model.eval().forward_features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(full, expected, rtol=1e-4, atol=1e-5)


def prepared_item(prepared: Prepared, row: int) -> torch.Tensor:
    return CxrDataset(prepared, rows=np.array([row]), image_size=SIZE)[0]["image"]


def test_fill_resumes_from_the_row_mask(tiny_prepared, counted, monkeypatch):
    prepared = Prepared.open(tiny_prepared)
    model = create_model("mobilenet_v2", "none", seed=0).freeze_body()
    real = CxrClassifier.forward_features
    calls = 0

    def dying(self, x):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(CxrClassifier, "forward_features", dying)
    with pytest.raises(KeyboardInterrupt):
        features.pooled_features(
            model, prepared, SIZE, torch.device("cpu"), batch_size=4, progress=False
        )
    assert len(list((prepared.root / "features").glob("*.rows"))) == 1
    seen: list[int] = []
    monkeypatch.setattr(
        CxrClassifier, "forward_features", lambda self, x: seen.append(len(x)) or real(self, x)
    )
    features.pooled_features(
        model, prepared, SIZE, torch.device("cpu"), batch_size=4, progress=False
    )
    assert sum(seen) == len(prepared.manifest) - 4  # the first batch was kept


def test_full_disk_is_refused_before_the_fill_naming_the_file(tiny_prepared, counted, monkeypatch):
    """The memory map's space is reserved: a full disk is an OSError naming the file, not a
    SIGBUS halfway through the fill."""

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    prepared = Prepared.open(tiny_prepared)
    model = create_model("mobilenet_v2", "none", seed=0).freeze_body()
    with pytest.raises(OSError) as err:
        features.pooled_features(model, prepared, SIZE, torch.device("cpu"), progress=False)
    folder = prepared.root / "features"
    assert err.value.errno == errno.ENOSPC and err.value.filename.startswith(str(folder))
    assert counted == [] and not list(folder.glob("*.npy"))
    line = os_error_message(err.value)
    assert "\n" not in line and "free some space" in line
