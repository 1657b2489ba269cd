"""Tracking: TensorBoard events mirror history.csv (a resume included); --mlflow logs the same."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from cxrguide.config import TrainConfig, save_yaml
from cxrguide.core import engine
from cxrguide.core.tracking import MLFLOW_RECORD, Tracker, finish_mlflow, flatten, scalar_name
from cxrguide.errors import CxrGuideError
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


def _fit(run_dir, epochs=4, mlflow=None, on_epoch_end=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = engine.EngineConfig(max_epochs=epochs, seed=1, progress=False, mlflow=mlflow)
    loader = engine.make_loader(data, 16, shuffle=True, seed=1)
    return engine.fit(model, _Task(), loader, loader, opt, cfg, run_dir, on_epoch_end=on_epoch_end)


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


def test_mlflow_logs_metrics_params_and_artefacts_and_a_resume_continues_its_run(
    tmp_path, monkeypatch
):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artefacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "stage1-toy"
    run_dir.mkdir()
    save_yaml(TrainConfig(lr=0.05, seed=1, mlflow=uri), run_dir / "config.yaml")

    def dies_after_epoch_2(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(run_dir, mlflow=uri, on_epoch_end=dies_after_epoch_2)
    _fit(run_dir, mlflow=uri)  # resumed: the same MLflow run goes on
    finish_mlflow(run_dir, uri)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cxrguide").experiment_id])
    assert run.info.run_name == "stage1-toy" and run.info.status == "FINISHED"
    hist = pd.read_csv(run_dir / "history.csv")
    for col in ("train_loss", "val_loss", "val_acc", "lr"):
        logged = client.get_metric_history(run.info.run_id, scalar_name(col))
        assert [m.step for m in logged] == [1, 2, 3, 4], col
        assert [m.value for m in logged] == pytest.approx(hist[col].tolist()), col
    assert run.data.params["lr"] == "0.05" and run.data.params["seed"] == "1"
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "config.yaml", "best.pt", "last.pt", MLFLOW_RECORD} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)


def test_train_takes_an_mlflow_uri_and_a_dead_store_is_one_line(tmp_path, capsys):
    from cxrguide.cli import build_parser
    from cxrguide.config import config_from_args

    args = build_parser().parse_args(["train", "--mlflow", "sqlite:///m.db"])
    assert config_from_args(TrainConfig, args).mlflow == "sqlite:///m.db"
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    with pytest.raises(CxrGuideError, match=r"^mlflow: nowhere://store: "):
        Tracker(tmp_path, mlflow="nowhere://store")
