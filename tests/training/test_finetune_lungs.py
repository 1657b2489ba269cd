"""Stage III modes that keep a marker outside the lungs out of the decision (issue 16):
early-gate, lung-input, rrr. Each trains, records itself, and is applied the same way by
evaluate and export; empty lung masks are skipped with a counted reason, never used."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_testutils import write_lung_cache
from cxrguide.cli import build_parser
from cxrguide.config import TrainConfig, config_from_args
from cxrguide.core.runs import read_info
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.evaluation.evaluate import score_split
from cxrguide.inference.export import export_run
from cxrguide.models.saved import load_run
from cxrguide.training import dispatch

pytestmark = pytest.mark.usefixtures("one_thread", "no_bootstrap")  # CIs: tests/evaluation


def _cfg(prep: Path, out: Path, attention: list[str]) -> TrainConfig:
    return TrainConfig(
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
        attention=attention,
        rrr_weight=0.01,
        lung_dilation=0.05,
    )


@pytest.mark.parametrize(
    ("mechanism", "inputs"),
    [("early-gate", ["early"]), ("lung-input", ["input"]), ("rrr", [])],
)
def test_each_mode_trains_records_itself_and_is_applied_at_evaluation(
    mechanism, inputs, tiny_prepared, tmp_path
):
    write_lung_cache(tiny_prepared, run="/somewhere/lung-run")
    rows = dispatch.train(_cfg(tiny_prepared, tmp_path / "runs", [mechanism]), score_split)
    run = Path(rows[0]["run"])
    info = read_info(run)
    assert (info.stage, info.attention, info.lung_inputs) == (3, [mechanism], inputs)
    assert info.lung_gate is bool(inputs)  # rrr is training-only: no mask at inference
    assert info.lung_dilation == 0.05
    hist = pd.read_csv(run / "history.csv")
    if mechanism == "rrr":
        assert (hist.train_rrr > 0).all() and hist.val_rrr.notna().all()
        lam = 0.01  # _cfg's rrr_weight (1.0 diverged in one epoch at this learning rate)
        assert hist.val_loss.to_numpy() == pytest.approx(
            (hist.val_ce + lam * hist.val_rrr).to_numpy()
        )
    model, _ = load_run(run)
    assert model.lung_inputs == tuple(inputs or ["last"])
    ds = CxrDataset(Prepared.open(tiny_prepared), "test", image_size=64, with_lungs=True)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    lung = torch.stack([ds[i]["lung"] for i in range(len(ds))])
    with torch.no_grad():
        probs = torch.softmax(model(x, lung if inputs else None), 1).numpy()
    saved = pd.read_csv(run / "predictions_test.csv")[["p_Normal", "p_Pneumonia", "p_COVID-19"]]
    assert saved.to_numpy() == pytest.approx(probs, abs=1e-5)
    if inputs:  # the exported graph blanks / gates exactly like the model (parity checked)
        result = export_run(run, "onnx", tmp_path / "m.onnx")
        assert result.inputs == ["image", "lung_mask"] and result.max_abs_diff < 1e-4


def test_empty_lung_masks_are_skipped_and_counted_all_empty_refuses(
    tiny_prepared, tmp_path, caplog
):
    masks = write_lung_cache(tiny_prepared)
    prepared = Prepared.open(tiny_prepared)
    train, test = prepared.rows("train"), prepared.rows("test")
    masks[train[0]] = 0
    masks[test[0]] = 0
    np.save(prepared.lung_cache_path, masks)
    with caplog.at_level(logging.INFO, logger="cxrguide"):
        rows = dispatch.train(_cfg(tiny_prepared, tmp_path / "runs", ["lung-input"]), score_split)
    assert f"skipped 1 of {len(train)} train images (empty lung mask)" in caplog.text
    metrics = json.loads((Path(rows[0]["run"]) / "metrics_test.json").read_text())
    assert metrics["skipped"] == {"empty lung mask": 1} and metrics["n"] == len(test) - 1
    masks[train] = 0
    np.save(prepared.lung_cache_path, masks)
    with pytest.raises(CxrGuideError, match="every train image has an empty lung mask"):
        dispatch.train(_cfg(tiny_prepared, tmp_path / "runs2", ["rrr"]), score_split)


def test_cli_accepts_the_new_mechanisms_and_their_constants(tmp_path):
    parser = build_parser()
    args = parser.parse_args(
        [
            "train",
            "--stage",
            "3",
            "--from",
            str(tmp_path),
            "--attention",
            "rrr,lung-input",
            "--attention",
            "early-gate",
            "--rrr-weight",
            "0.5",
            "--lung-dilation",
            "0.05",
        ]
    )
    cfg = config_from_args(TrainConfig, args)
    assert cfg.attention == ["early-gate", "lung-input", "rrr"]
    assert (cfg.rrr_weight, cfg.lung_dilation) == (0.5, 0.05)
    bad = parser.parse_args(["train", "--stage", "3", "--lung-dilation", "0.5"])
    with pytest.raises(ConfigError, match="lung_dilation"):
        config_from_args(TrainConfig, bad)
