from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrguide.cli import main
from lung_phantoms import write_phantoms

pytestmark = pytest.mark.usefixtures("one_thread")


def test_prepare_train_evaluate_predict_from_the_command_line(tmp_path, tiny_prepared, capsys):
    ph = write_phantoms(tmp_path / "ph", n=20, size=64)
    prep, run = str(tmp_path / "lp"), str(tmp_path / "run")
    assert main(["lungs", "prepare", "--source", f"v7={ph}", "--out", prep, "--size", "32"]) == 0
    assert "prepared: 20 images" in capsys.readouterr().out
    widths = [a for w in (4, 8, 8, 16, 16, 4) for a in ("--features", str(w))]
    code = main(
        [
            "lungs",
            "train",
            "--data",
            prep,
            "--out",
            run,
            *widths,
            "--max-epochs",
            "2",
            "--batch-size",
            "4",
            "--no-progress",
            "--no-augment",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "trained: 2 epochs" in out and "test: n=" in out
    assert main(["lungs", "evaluate", run, "--splits", "val"]) == 0
    assert "val: n=" in capsys.readouterr().out
    assert json.loads((tmp_path / "run/metrics.json").read_text())["val"]["n"] >= 1

    assert (
        main(
            [
                "lungs",
                "predict",
                run,
                "--data",
                str(tiny_prepared),
                "--batch-size",
                "8",
                "--overlay",
                str(tmp_path / "prep_ov"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "masks: 36 images" in out and f"overlays: 36 -> {tmp_path / 'prep_ov'}" in out
    assert len(list((tmp_path / "prep_ov").glob("*_overlay.png"))) == 36
    masks = np.load(tiny_prepared / "cache/lungs_64.npy")
    quality = pd.read_csv(tiny_prepared / "lung_quality.csv")
    manifest = pd.read_csv(tiny_prepared / "manifest.csv")
    assert masks.shape == (36, 64, 64) and list(quality.image_id) == list(manifest.image_id)

    image = str(ph / "images/ph000.png")
    assert main(["lungs", "predict", run, image, "--overlay", str(tmp_path / "ov")]) == 0
    assert "ph000.png:" in capsys.readouterr().out
    assert (tmp_path / "ov/ph000_overlay.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lungs", "prepare", "--source", "coco=x", "--out", "o"], "unknown lung source"),
        (["lungs", "train", "--data", "nowhere", "--out", "r"], "nowhere: no such folder"),
        (["lungs", "evaluate", "nowhere"], "not a run folder"),
        (["lungs", "predict", "nowhere"], "give --data PREP or at least one image"),
        (["lungs", "predict", "nowhere", "a.png", "--data", "p"], "not both"),
        (["lungs", "train", "--size", "40"], "multiple of 16"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
