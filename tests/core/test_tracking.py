"""Tracking: TensorBoard events mirror history.csv (a resume included); --mlflow logs the same."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from cxrguide.cli import main
from cxrguide.core import engine
from cxrguide.core.tracking import MLFLOW_RECORD, flatten, scalar_name
from tracking_testutils import assert_events_match_history


def test_history_columns_become_one_chart_per_metric():
    columns = ("train_loss", "val_loss", "val_dice", "train_l2", "lr")
    wanted = ["loss/train", "loss/val", "dice/val", "l2/train", "lr"]
    assert [scalar_name(c) for c in columns] == wanted
    nested = {"lr": 0.1, "head": {"widths": [1, 2]}}
    assert flatten(nested) == {"lr": "0.1", "head.widths": "[1, 2]"}


class _Task:
    def train_step(self, model, batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        return loss, {"loss": loss.item() * len(y), "n": len(y)}

    def eval_step(self, model, batch):
        x, y = batch
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y, reduction="sum").item()
        return {"loss": loss, "acc": (logits.argmax(1) == y).sum().item(), "n": len(y)}


def _fit(run_dir, epochs=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = engine.EngineConfig(max_epochs=epochs, seed=1, progress=False)
    loader = engine.make_loader(data, 16, shuffle=True, seed=1)
    return engine.fit(model, _Task(), loader, loader, opt, cfg, run_dir)


def test_a_run_killed_after_logging_resumes_without_a_second_point(tmp_path, monkeypatch):
    real, saves = engine._atomic_save, []

    def dies_before_the_third_checkpoint(obj, path):
        saves.append(path.name)
        if saves.count("last.pt") == 3:
            raise KeyboardInterrupt  # epoch 3 is in the event file, not in last.pt
        real(obj, path)

    monkeypatch.setattr(engine, "_atomic_save", dies_before_the_third_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path)
    monkeypatch.setattr(engine, "_atomic_save", real)
    resumed = _fit(tmp_path)
    scalars = assert_events_match_history(tmp_path)  # steps 1..4 once each: epoch 3 purged
    assert [s for s, _ in scalars["acc/val"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["lr"]] == pytest.approx([0.05] * 4)
    assert pd.read_csv(tmp_path / "history.csv").val_loss.tolist() == pytest.approx(
        [row["val_loss"] for row in resumed.history]
    )


def test_mlflow_flag_logs_metrics_params_and_the_run_folder(tiny_prepared, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artefacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train", "--stage", "1", "--data", str(tiny_prepared), "--out",
                 str(tmp_path / "runs"), "--backbone", "mobilenet_v2", "--weights", "none",
                 "--image-size", "64", "--max-epochs", "2", "--batch-size", "8", "--lr", "0.01",
                 "--no-progress", "--mlflow", uri])  # fmt: skip
    assert code == 0
    run_dir = tmp_path / "runs/stage1-mobilenet_v2"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cxrguide").experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert (run_dir / MLFLOW_RECORD).is_file()
    hist = pd.read_csv(run_dir / "history.csv")
    for col in ("train_loss", "val_loss", "val_acc", "lr"):
        logged = client.get_metric_history(run.info.run_id, scalar_name(col))
        assert [m.step for m in logged] == hist.epoch.tolist(), col
        assert [m.value for m in logged] == pytest.approx(hist[col].tolist()), col
    assert run.data.params["lr"] == "0.01" and run.data.params["stage"] == "1"
    assert run.data.params["data"] == str(tiny_prepared)
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "config.yaml", "model.yaml", "metrics_test.json"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
