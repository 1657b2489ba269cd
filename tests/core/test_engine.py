from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from cxrguide.core import engine
from cxrguide.errors import CxrGuideError
from cxrguide.training.losses import l2_penalty, paper_cross_entropy


class ClassifyTask:
    def train_step(self, model, batch):
        x, y = batch
        loss = paper_cross_entropy(model(x), y)
        return loss, {"loss": loss.item() * len(y), "n": len(y)}

    def eval_step(self, model, batch):
        x, y = batch
        logits = model(x)
        loss = paper_cross_entropy(logits, y)
        correct = (logits.argmax(1) == y).sum().item()
        return {"loss": loss.item() * len(y), "acc": correct, "n": len(y)}


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return TensorDataset(x, y)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ELU(), nn.Dropout(0.1), nn.Linear(16, 3))


def _fit(run_dir, max_epochs=6, patience=10, on_epoch_end=None, model=None):
    model = model or _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cfg = engine.EngineConfig(max_epochs=max_epochs, patience=patience, seed=3, progress=False)
    tl = engine.make_loader(_data(), 16, shuffle=True, seed=3)
    vl = engine.make_loader(_data(48, 1), 16, shuffle=False, seed=3)
    return model, engine.fit(
        model, ClassifyTask(), tl, vl, opt, cfg, run_dir, on_epoch_end=on_epoch_end
    )


def test_fit_learns_and_writes_history_and_checkpoints(tmp_path):
    model, result = _fit(tmp_path)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert len(hist) == 6 and {"train_loss", "val_loss", "val_acc"} <= set(hist.columns)
    assert hist.val_loss.iloc[-1] < hist.val_loss.iloc[0]
    assert result.best_value == pytest.approx(hist.val_loss.min())
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    full_model, full = _fit(tmp_path / "full")

    class Kill(Exception):
        pass

    def die(epoch, row):
        if epoch == 2:
            raise Kill

    with pytest.raises(Kill):
        _fit(tmp_path / "resumed", on_epoch_end=die)
    resumed_model, resumed = _fit(tmp_path / "resumed")
    assert resumed.history == full.history
    for a, b in zip(
        full_model.state_dict().values(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_early_stopping_restores_best_weights(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=5.0)  # diverges: val loss gets worse
    cfg = engine.EngineConfig(max_epochs=50, patience=2, seed=0, progress=False)
    tl = engine.make_loader(_data(), 16, shuffle=True, seed=0)
    vl = engine.make_loader(_data(48, 1), 16, shuffle=False, seed=0)
    result = engine.fit(model, ClassifyTask(), tl, vl, opt, cfg, tmp_path)
    assert result.stopped_early and result.epochs_run < 50
    assert result.epochs_run - result.best_epoch == 2
    best = torch.load(tmp_path / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in best.items())


def test_finished_run_is_not_retrained(tmp_path):
    _fit(tmp_path)
    calls = []
    _, again = _fit(tmp_path, on_epoch_end=lambda e, r: calls.append(e))
    assert calls == [] and again.epochs_run == 6


def test_paper_loss_matches_cross_entropy_and_is_bounded():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 50.0]])
    y = torch.tensor([0, 0])
    ref = nn.functional.cross_entropy(logits[:1], y[:1])
    assert paper_cross_entropy(logits[:1], y[:1]) == pytest.approx(ref.item(), rel=1e-5)
    assert paper_cross_entropy(logits[1:], y[1:]).item() == pytest.approx(
        -torch.log(torch.tensor(1e-7)).item(), rel=1e-3
    )


def test_l2_penalty_counts_trainable_kernels_only():
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.fill_(1.0)
        m.bias.fill_(5.0)
    assert l2_penalty(m, 1e-3).item() == pytest.approx(4e-3)
    m.weight.requires_grad_(False)
    assert l2_penalty(m, 1e-3).item() == 0.0


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    class NanAfterTwoEpochs(ClassifyTask):
        epoch = 0

        def train_step(self, model, batch):
            loss, stats = super().train_step(model, batch)
            return (loss * float("nan") if self.epoch >= 2 else loss), stats

    task = NanAfterTwoEpochs()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = engine.EngineConfig(max_epochs=5, seed=0, progress=False)
    tl = engine.make_loader(_data(), 16, shuffle=True, seed=0)
    vl = engine.make_loader(_data(48, 1), 16, shuffle=False, seed=0)

    def bump(epoch, row):
        task.epoch = epoch + 1

    with pytest.raises(CxrGuideError, match="loss is nan"):
        engine.fit(model, task, tl, vl, opt, cfg, tmp_path, on_epoch_end=bump)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_bf16_autocast_runs_on_cpu(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = engine.EngineConfig(max_epochs=2, seed=0, progress=False, precision="bf16")
    tl = engine.make_loader(_data(), 16, shuffle=True, seed=0)
    vl = engine.make_loader(_data(48, 1), 16, shuffle=False, seed=0)
    result = engine.fit(model, ClassifyTask(), tl, vl, opt, cfg, tmp_path)
    assert result.epochs_run == 2 and result.best_value < 2.0
