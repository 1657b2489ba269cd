"""Domain-adversarial training against the source: the reversal, the ramp, a run's history,
and the adversary losing its grip on a planted source."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxr_testutils import make_prepared
from cxrguide.config import TrainConfig
from cxrguide.core import engine
from cxrguide.data.datasets import Prepared
from cxrguide.errors import ConfigError
from cxrguide.models.classifier import CxrClassifier
from cxrguide.models.head import PaperHead
from cxrguide.training import finetune
from cxrguide.training.adversary import (
    AdversarialNet,
    AdversaryTask,
    SourceAdversary,
    dann_lambda,
    grad_reverse,
    source_codes,
)
from cxrguide.training.fit_tasks import ClassifierTask

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gradient_reversal_is_identity_forward_and_flips_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = grad_reverse(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([2.0, 4.0, -8.0])).sum().backward()
    assert x.grad.tolist() == [-0.5, -1.0, 2.0]
    x.grad = None
    grad_reverse(x, 0.0).sum().backward()
    assert x.grad.abs().sum().item() == 0.0


def test_dann_ramp():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(2.0) == dann_lambda(1.0) and dann_lambda(-1) == 0.0


def test_source_codes_leave_out_sources_absent_from_training():
    names = np.array(["b", "a", "held", "a", "b"])
    codes, known = source_codes(names, np.array([0, 1, 3, 4]))
    assert known == ["a", "b"] and codes.tolist() == [1, 0, -1, 0, 1]
    with pytest.raises(ConfigError, match="one source only"):
        source_codes(names, np.array([1, 3]))


def test_adversary_config_is_checked():
    with pytest.raises(ConfigError, match="--stage 2 or 3"):
        TrainConfig(stage=1, adversary="source").validate()
    with pytest.raises(ConfigError, match="adversary_weight"):
        TrainConfig(stage=2, adversary="source", adversary_weight=-1).validate()


def test_stage2_with_adversary_writes_its_loss_and_ramp_to_history(tmp_path, monkeypatch):
    root = make_prepared(tmp_path / "prep", n_per_class=12, size=32)
    saved = {}
    monkeypatch.setattr(
        finetune,
        "finish_run",
        lambda run, cfg, model, info, score: saved.update(model=model, run=run),
    )
    cfg = TrainConfig(
        stage=2,
        data=root,
        backbone="mobilenet_v2",
        out=tmp_path / "runs",
        weights="none",
        image_size=32,
        max_epochs=1,
        batch_size=4,
        seed=0,
        adversary="source",
        group_by="site",
        progress=False,
    )
    model, info = finetune._start(cfg, None, "mobilenet_v2")
    finetune.fine_tune(cfg, model, info, Prepared.open(root), None, None, optimizer="adam")
    hist = pd.read_csv(saved["run"] / "history.csv")
    for col in ("train_adv", "train_adv_acc", "val_adv", "val_adv_acc"):
        assert col in hist.columns
    # two sites: an untrained adversary's cross-entropy is about ln 2
    assert 0.5 < hist.train_adv.iloc[0] < 1.0 and 0 <= hist.val_adv_acc.iloc[0] <= 1
    # 24 training films in batches of 4: 6 steps, the ramp's mean over them (every batch full)
    ramp = np.mean([dann_lambda(s / 6) for s in range(6)])
    assert hist.train_adv_lambda.iloc[0] == pytest.approx(ramp, rel=1e-6)
    # the saved run is the classifier alone, not the adversary
    assert isinstance(saved["model"], CxrClassifier)
    assert not any("adversary" in k for k in saved["model"].state_dict())


class _TinyBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Films(torch.utils.data.Dataset):
    def __init__(self, x, y, start: int = 0) -> None:
        self.x, self.y, self.start = x, y, start

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "index": torch.tensor(self.start + i)}


def _planted(n: int = 160):
    """16 px films: the class is a blob's place, the source (0/1) a brightness offset."""
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 3, n), rng.integers(0, 2, n)
    yy, xx = np.mgrid[:16, :16]
    films = [
        rng.normal(0.3, 0.05, (16, 16))
        + 0.25 * src
        + 0.4 * np.exp(-((yy - 4 - 4 * k) ** 2 + (xx - 4 - 4 * k) ** 2) / 8)
        for k, src in zip(y, s, strict=True)
    ]
    return (
        torch.tensor(np.array(films), dtype=torch.float32)[:, None],
        torch.tensor(y),
        torch.tensor(s),
    )


def _adversary_accuracy(weight: float, out: Path, epochs: int = 10) -> list[float]:
    x, y, s = _planted()
    torch.manual_seed(0)
    model = CxrClassifier(_TinyBody(), PaperHead(8, (16,), (0.0,)), [0.5] * 3, [0.25] * 3)
    net = AdversarialNet(model, model, SourceAdversary(8, 2, width=16))
    task = AdversaryTask(ClassifierTask(0.0), s, weight, total_steps=epochs * 8)
    train = engine.make_loader(_Films(x[:120], y[:120]), 16, shuffle=True, seed=0)
    val = engine.make_loader(_Films(x[120:], y[120:], 120), 40, shuffle=False, seed=0)
    result = engine.fit(
        net,
        task,
        train,
        val,
        torch.optim.Adam(net.parameters(), 1e-2),
        engine.EngineConfig(max_epochs=epochs, patience=epochs, progress=False),
        out,
    )
    return [row["train_adv_acc"] for row in result.history]


def test_reversal_drives_the_adversary_to_chance_on_a_planted_source(tmp_path):
    """Without reversal (weight 0) the adversary reads the planted brightness perfectly; with
    it the body hides the source from the adversary (its accuracy near chance, 0.5)."""
    plain = _adversary_accuracy(0.0, tmp_path / "plain")
    adversarial = _adversary_accuracy(1.0, tmp_path / "adv")
    assert np.mean(plain[-3:]) > 0.9
    assert np.mean(adversarial[-3:]) < 0.65
