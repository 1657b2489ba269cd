"""Stage III end to end on the tiny prepared set (64 px, MobileNet V2 random init)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxr_testutils import write_lung_cache
from cxrguide.cli import build_parser
from cxrguide.config import TrainConfig, config_from_args
from cxrguide.core.runs import RunInfo, read_info, save_run
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.evaluation.evaluate import score_split
from cxrguide.models.saved import load_run
from cxrguide.models.zoo import create_model
from cxrguide.training import dispatch
from cxrguide.training.finetune import fine_tune

pytestmark = pytest.mark.usefixtures("one_thread", "no_bootstrap")  # CIs: tests/evaluation


def _cfg(prep: Path | None, out: Path, **kw) -> TrainConfig:
    base = dict(
        stage=3,
        data=prep,
        backbone="mobilenet_v2",
        out=out,
        weights="none",
        image_size=64,
        max_epochs=1,
        batch_size=4,
        seed=0,
        finetune_lr=1e-2,
        augment=False,
    )
    return TrainConfig(**{**base, **kw})


def test_stage3_from_backbone_with_gate_and_gain(tiny_prepared, tmp_path):
    write_lung_cache(tiny_prepared, run="/somewhere/lung-run")
    rows = dispatch.train(_cfg(tiny_prepared, tmp_path / "runs", max_epochs=2), score_split)
    run = Path(rows[0]["run"])
    assert run == tmp_path / "runs/stage3-mobilenet_v2"
    info = read_info(run)
    assert (info.stage, info.lung_gate, info.attention) == (3, True, ["gate", "gain"])
    assert info.lung_model == "/somewhere/lung-run" and info.image_size == 64
    hist = pd.read_csv(run / "history.csv")
    assert len(hist) == 2
    for col in ("train_loss", "train_ce", "train_am", "val_loss", "val_ce", "val_am", "val_acc"):
        assert hist[col].notna().all(), col
    # the monitored loss is the objective: ce + alpha * am (alpha 1, no external term)
    assert hist.val_loss.to_numpy() == pytest.approx((hist.val_ce + hist.val_am).to_numpy())
    assert ((hist.train_am > 0) & (hist.train_am < 1)).all()
    metrics = json.loads((run / "metrics_test.json").read_text())
    lungs = metrics["attention"]["lungs"]
    # every test image is scored; a random-init model may leave some CAMs empty (counted apart)
    assert lungs["energy"]["n"] + lungs["empty_cams"] == 6
    assert lungs["energy"]["n"] == 0 or 0 <= lungs["energy"]["mean"] <= 1
    board = pd.read_csv(tmp_path / "runs/leaderboard_stage3.csv")
    assert list(board.run) == [str(run)]
    # a random body has no BatchNorm statistics worth freezing: GAIN fell back to "clean"
    assert yaml.safe_load((run / "config.yaml").read_text())["gain_bn"] == "clean"
    # evaluate gated the saved model with the lung masks of each image

    model, _ = load_run(run)
    ds = CxrDataset(Prepared.open(tiny_prepared), "test", image_size=64, with_lungs=True)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    lung = torch.stack([ds[i]["lung"] for i in range(len(ds))])
    with torch.no_grad():
        probs = torch.softmax(model(x, lung), 1).numpy()
        ungated = torch.softmax(model(x), 1).numpy()
    saved = pd.read_csv(run / "predictions_test.csv")[["p_Normal", "p_Pneumonia", "p_COVID-19"]]
    assert saved.to_numpy() == pytest.approx(probs, abs=1e-5)
    assert not np.allclose(probs, ungated, atol=1e-4)


def _bns(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_stage3_from_a_parent_run_gain_only_needs_no_lung_masks(tiny_prepared, tmp_path):
    parent = tmp_path / "runs/stage2-mobilenet_v2"
    model = create_model("mobilenet_v2", "none", seed=5)
    save_run(
        parent,
        model,
        RunInfo(
            "mobilenet_v2", 2, 64, [128, 64], [0.1, 0.05], "elu", "random", data=str(tiny_prepared)
        ),
    )
    rows = dispatch.train(
        _cfg(
            None,
            tmp_path / "runs",
            from_run=parent,
            attention=["gain"],
            gain_second_order=False,
            finetune_lr=1e-3,
        ),
        score_split,
    )
    trained, info = load_run(rows[0]["run"])
    assert info.parent == str(parent) and info.attention == ["gain"]
    saved = yaml.safe_load((Path(rows[0]["run"]) / "config.yaml").read_text())
    assert saved["gain_bn"] == "frozen"  # a parent run's statistics are kept
    for key in ("running_mean", "running_var"):  # ... and never moved
        assert all(
            torch.equal(getattr(a, key), getattr(b, key))
            for a, b in zip(_bns(model), _bns(trained), strict=True)
        )
    assert not info.lung_gate and info.lung_model == ""
    moved = [
        not torch.equal(a, b)
        for a, b in zip(model.body.parameters(), trained.body.parameters(), strict=True)
    ]
    assert any(moved)  # the body was fine-tuned
    metrics = json.loads((Path(rows[0]["run"]) / "metrics_val.json").read_text())
    assert "lungs predict" in metrics["attention"]["lungs"]["skipped"]


def test_stage3_needs_the_lung_cache_for_the_gate(tiny_prepared, tmp_path):
    with pytest.raises(CxrGuideError, match="cxrguide lungs predict"):
        dispatch.train(_cfg(tiny_prepared, tmp_path / "runs", attention=["gate"]), score_split)
    with pytest.raises(CxrGuideError, match="cxrguide lungs predict"):
        dispatch.train(
            _cfg(tiny_prepared, tmp_path / "runs", attention=["gain", "external"]), score_split
        )
    with pytest.raises(ConfigError, match="--data"):
        dispatch.train(_cfg(None, tmp_path / "runs", attention=["gain"]), score_split)


def test_cli_flags_for_stage3(tmp_path):
    parser = build_parser()
    args = parser.parse_args(
        [
            "train",
            "--stage",
            "3",
            "--from",
            str(tmp_path),
            "--attention",
            "gain,external",
            "--attention",
            "gate",
            "--gain-alpha",
            "0.5",
            "--no-gain-second-order",
            "--lung-model",
            "lungrun",
        ]
    )
    cfg = config_from_args(TrainConfig, args)
    assert cfg.attention == ["gate", "gain", "external"]
    assert (cfg.stage, cfg.gain_alpha, cfg.gain_second_order) == (3, 0.5, False)
    assert cfg.lung_model == Path("lungrun")
    bad = parser.parse_args(["train", "--stage", "3", "--attention", "gate,attn"])
    with pytest.raises(ConfigError, match="attention: unknown mechanism"):
        config_from_args(TrainConfig, bad)
    assert config_from_args(TrainConfig, parser.parse_args(["train"])).attention == ["gate", "gain"]


@pytest.mark.slow
def test_stage3_gain_under_torchrun_gloo(tiny_prepared, tmp_path):
    """Both GAIN passes and autograd.grad live in one forward: DDP sees one ordinary backward."""

    write_lung_cache(tiny_prepared)
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cxrguide",
        "train",
        "--stage",
        "3",
        "--data",
        str(tiny_prepared),
        "--weights",
        "none",
        "--image-size",
        "64",
        "--batch-size",
        "4",
        "--max-epochs",
        "1",
        "--attention",
        "gate,gain,external",
        "--no-augment",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    hist = pd.read_csv(out / "stage3-mobilenet_v2/history.csv")
    assert hist.train_am.notna().all() and hist.val_loss.notna().all()
    assert read_info(out / "stage3-mobilenet_v2").attention == ["gate", "gain", "external"]


def test_fine_tune_without_settings_is_stage2_on_the_same_code_path(tiny_prepared, tmp_path):
    prepared = Prepared.open(tiny_prepared)
    start = create_model("mobilenet_v2", "none", seed=2)
    info = RunInfo("mobilenet_v2", 0, 64, [128, 64], [0.1, 0.05], "elu", "random")
    cfg = _cfg(tiny_prepared, tmp_path / "runs", stage=2, finetune_lr=1e-3)
    with pytest.raises(ConfigError, match="optimizer"):
        fine_tune(cfg, start, info, prepared, None, score_split, optimizer="lbfgs")
    row = fine_tune(
        cfg,
        create_model("mobilenet_v2", "none", seed=2),
        info,
        prepared,
        None,
        score_split,
        optimizer="adam",
    )
    run = Path(row["run"])
    assert run.name == "stage2-mobilenet_v2"
    saved = read_info(run)
    assert (saved.stage, saved.lung_gate, saved.attention) == (2, False, [])
    assert list(pd.read_csv(run / "history.csv").columns) == [
        "epoch",
        "train_loss",
        "train_acc",
        "train_l2",
        "val_loss",
        "val_acc",
        "lr",
    ]
