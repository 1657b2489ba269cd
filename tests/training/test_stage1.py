from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file

from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.evaluate import score_split
from cxrguide.models.classifier import CxrClassifier
from cxrguide.models.saved import load_run
from cxrguide.models.weights import WEIGHTS_ENV
from cxrguide.models.zoo import create_model
from cxrguide.training import dispatch, stage1
from inference_helpers import tiny_train_config
from tracking_testutils import assert_events_match_history

pytestmark = pytest.mark.usefixtures("no_bootstrap")  # the CIs: tests/evaluation


_cfg = tiny_train_config


def test_stage1_feature_cache_equals_training_the_frozen_whole_model(tiny_prepared, tmp_path):
    cached = dispatch.train(_cfg(tiny_prepared, tmp_path / "a"), score_split)[0]
    whole = dispatch.train(_cfg(tiny_prepared, tmp_path / "b", feature_cache=False), score_split)[0]
    a, _ = load_run(cached["run"])
    b, _ = load_run(whole["run"])
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-5), name
    ha = pd.read_csv(Path(cached["run"]) / "history.csv")
    hb = pd.read_csv(Path(whole["run"]) / "history.csv")
    assert ha.val_loss.to_numpy() == pytest.approx(hb.val_loss.to_numpy(), abs=1e-5)
    # the frozen body did not move: it equals a fresh body built with the same seed

    fresh = create_model("mobilenet_v2", "none", seed=0)
    for k, v in fresh.body.state_dict().items():
        assert torch.equal(v, a.body.state_dict()[k]), k


def test_stage1_run_folder_leaderboard_and_cache_reuse(tiny_prepared, tmp_path, monkeypatch):
    rows = dispatch.train(
        _cfg(tiny_prepared, tmp_path / "runs", backbone="mobilenet_v2,efficientnet_b0"), score_split
    )
    board = pd.read_csv(tmp_path / "runs/leaderboard_stage1.csv")
    assert list(board.backbone) == sorted(
        [r["backbone"] for r in rows], key=lambda b: -board.set_index("backbone").val_accuracy[b]
    )
    assert board.val_accuracy.is_monotonic_decreasing
    run = tmp_path / "runs/stage1-mobilenet_v2"
    for name in (
        "config.yaml",
        "model.yaml",
        "model.pt",
        "history.csv",
        "metrics_test.json",
        "metrics_val.json",
        "predictions_test.csv",
    ):
        assert (run / name).exists(), name
    scalars = assert_events_match_history(run)  # TensorBoard mirrors history.csv
    assert {"loss/train", "loss/val", "acc/val", "lr"} <= set(scalars)
    assert [v for _, v in scalars["lr"]] == pytest.approx([1e-2, 1e-2])
    assert len(list((tiny_prepared / "features").glob("*.npy"))) == 2
    # a second Stage I run on the same data reuses the cache: the body never runs again

    def boom(self, x):
        raise AssertionError("body ran although its features are cached")

    monkeypatch.setattr(CxrClassifier, "forward_features", boom)
    monkeypatch.setattr(
        stage1,
        "finish_run",
        lambda run, cfg, model, info, score: {"val_accuracy": 0, "test_accuracy": 0},
    )
    dispatch.train(_cfg(tiny_prepared, tmp_path / "again"), score_split)


def test_existing_run_needs_resume(tiny_prepared, tmp_path):
    dispatch.train(_cfg(tiny_prepared, tmp_path / "r", max_epochs=1), score_split)
    with pytest.raises(CxrGuideError, match="--resume"):
        dispatch.train(_cfg(tiny_prepared, tmp_path / "r", max_epochs=1), score_split)
    rows = dispatch.train(
        _cfg(tiny_prepared, tmp_path / "r", max_epochs=1, resume=True), score_split
    )
    assert rows[0]["backbone"] == "mobilenet_v2"


def test_stage2_fine_tunes_body_of_the_best_run(tiny_prepared, tmp_path):
    dispatch.train(_cfg(tiny_prepared, tmp_path / "runs", max_epochs=1), score_split)
    board = tmp_path / "runs/leaderboard_stage1.csv"
    rows = dispatch.train(
        _cfg(
            tiny_prepared,
            tmp_path / "runs",
            stage=2,
            from_run=board,
            top=1,
            max_epochs=1,
            finetune_lr=1e-2,
            data=None,
        ),
        score_split,
    )
    s1, _ = load_run(tmp_path / "runs/stage1-mobilenet_v2")
    s2, info = load_run(rows[0]["run"])
    assert info.stage == 2 and info.parent.endswith("stage1-mobilenet_v2")
    changed = [
        k for k, v in s1.body.state_dict().items() if not torch.equal(v, s2.body.state_dict()[k])
    ]
    assert changed, "Stage II must update the body"
    assert (tmp_path / "runs/leaderboard_stage2.csv").exists()


def test_stage2_needs_a_source(tiny_prepared, tmp_path):
    with pytest.raises(CxrGuideError, match="--from"):
        dispatch.train(_cfg(tiny_prepared, tmp_path / "x", stage=2), score_split)
    with pytest.raises(CxrGuideError, match="no such leaderboard"):
        dispatch.train(
            _cfg(tiny_prepared, tmp_path / "x", stage=2, from_run=tmp_path / "nope.csv"),
            score_split,
        )


def test_stage1_run_records_imagenet_weights_from_the_weights_folder(
    tiny_prepared, tmp_path, monkeypatch
):
    """--weights imagenet offline: a timm-format file in $CXRGUIDE_WEIGHTS_DIR is what the body
    holds, and the run and its leaderboard say 'imagenet:<file>'."""

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(5)
    reference = timm.create_model("mobilenetv2_100.ra_in1k").state_dict()
    path = tmp_path / "weights" / "mobilenetv2_100.ra_in1k.safetensors"
    path.parent.mkdir()
    save_file(reference, str(path))
    monkeypatch.setenv(WEIGHTS_ENV, str(path.parent))
    row = dispatch.train(
        _cfg(tiny_prepared, tmp_path / "runs", weights="imagenet", max_epochs=1), score_split
    )[0]
    model, info = load_run(row["run"])
    assert info.weights_source == f"imagenet:{path}" == row["weights"]
    for key, value in model.body.state_dict().items():
        assert torch.equal(value, reference[key]), key
    board = pd.read_csv(tmp_path / "runs/leaderboard_stage1.csv")
    assert board.weights.iloc[0] == f"imagenet:{path}"
