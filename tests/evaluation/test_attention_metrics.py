"""Attention metrics: energy share, pointing game, and their wiring to masks and rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from cxrguide.config import TrainConfig
from cxrguide.data.datasets import Prepared
from cxrguide.evaluation import attention_metrics as am
from cxrguide.evaluation.evaluate import evaluate_run, score_split
from cxrguide.models.zoo import create_model
from cxrguide.training.dispatch import train


def _lungs(prep: Path, size: int = 64) -> np.ndarray:
    n = len(Prepared.open(prep).manifest)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):  # a different box per row, so a row mix-up shows
        top = 4 + i % 20
        masks[i, top : top + 30, 8:56] = 255
    np.save(prep / f"cache/lungs_{size}.npy", masks)
    return masks


def test_energy_share_and_pointing_game_by_hand():
    cam = np.zeros((3, 4, 4))
    cam[0, 0, 0], cam[0, 3, 3] = 1.0, 3.0  # 3/4 of the mass at (3, 3)
    cam[1, 1, 1] = 1.0
    region = np.zeros((3, 4, 4), bool)
    region[:, 3, 3] = True
    share = am.energy_share(cam, region)
    assert share[0] == pytest.approx(0.75) and share[1] == 0 and np.isnan(share[2])
    hits = am.pointing_game(cam, region)
    assert hits[0] == 1 and hits[1] == 0 and np.isnan(hits[2])
    s = am.summarize(np.array([0.2, 0.4, np.nan, 0.9]))
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.5) and s["median"] == pytest.approx(0.4)
    assert am.summarize(np.array([np.nan])) == {"n": 0}


@pytest.mark.parametrize("inside", [True, False])
def test_report_aligns_cams_with_each_rows_lung_mask(tiny_prepared, monkeypatch, inside):
    masks = _lungs(tiny_prepared)

    def fake_cam(model, x, target, lung):  # a map equal to (or avoiding) the lungs it is given
        del model, target
        assert lung is None
        rows = current["rows"]
        m = torch.from_numpy(masks[rows] / 255.0).float()[:, None]
        return torch.zeros(len(x), 3), m if inside else 1 - m

    current = {}
    real_loader = am.DataLoader

    def loader(ds, **kw):
        for batch in real_loader(ds, **kw):
            current["rows"] = batch["index"].numpy()
            yield batch

    monkeypatch.setattr(am, "model_cam", fake_cam)
    monkeypatch.setattr(am, "DataLoader", loader)
    prep = Prepared.open(tiny_prepared)
    rep = am.attention_report(
        torch.nn.Identity(), prep, "test", 64, torch.device("cpu"), batch_size=4, progress=False
    )
    lungs = rep["lungs"]
    assert rep["images"] == 6 and lungs["empty_cams"] == 0
    assert lungs["energy"]["mean"] == pytest.approx(1.0 if inside else 0.0)
    assert lungs["pointing_game"] == (1.0 if inside else 0.0)
    assert set(lungs["energy_mean_by_class"]) == {"Normal", "Pneumonia", "COVID-19"}
    assert "no synthetic source" in rep["lesions"]["skipped"]


def test_report_skips_with_a_note_without_masks_and_scores_a_real_model(tiny_prepared):
    prep = Prepared.open(tiny_prepared)
    model = create_model("mobilenet_v2", "none", seed=0).eval()
    rep = am.attention_report(model, prep, "test", 64, torch.device("cpu"), progress=False)
    assert "lungs predict" in rep["lungs"]["skipped"] and "images" not in rep
    _lungs(tiny_prepared)
    rep = am.attention_report(
        model, prep, "train", 64, torch.device("cpu"), max_images=5, progress=False
    )
    e = rep["lungs"]["energy"]
    assert rep["images"] == 5 and e["n"] + rep["lungs"]["empty_cams"] == 5
    assert 0 <= e["min"] <= e["q25"] <= e["median"] <= e["q75"] <= e["max"] <= 1


def test_synthetic_lesion_masks_are_letterboxed_like_the_cache(tiny_prepared, tmp_path):
    src = tmp_path / "synth"
    (src / "lesions").mkdir(parents=True)
    prep = Prepared.open(tiny_prepared)
    cfg = yaml.safe_load((tiny_prepared / "prepare_config.yaml").read_text())
    cfg["source"] = [f"synthetic={src}"]
    (tiny_prepared / "prepare_config.yaml").write_text(yaml.safe_dump(cfg))
    row = int(prep.rows("test")[0])
    stem = Path(prep.manifest.path[row]).stem
    lesion = np.zeros((32, 64), np.uint8)  # wide file: letterboxed to 64x64 (16 px pad on top)
    lesion[0:8, 0:16] = 255
    Image.fromarray(lesion).save(src / "lesions" / f"{stem}.png")
    roots = am.lesion_roots(prep)
    assert roots == {"synthetic": src}
    mask = am.lesion_mask(prep, row, 32, roots)  # cache 64 px -> model input 32 px
    expected = np.zeros((32, 32), bool)
    expected[8:12, 0:8] = True
    assert np.array_equal(mask, expected)
    assert am.lesion_mask(prep, int(prep.rows("test")[1]), 32, roots) is None  # no file
    model = create_model("mobilenet_v2", "none", seed=0).eval()
    rep = am.attention_report(model, prep, "test", 32, torch.device("cpu"), progress=False)
    assert "lungs predict" in rep["lungs"]["skipped"]
    assert rep["lesions"]["energy"]["n"] + rep["lesions"]["empty_cams"] == 1
    json.dumps(rep)  # JSON-able


def test_evaluate_puts_lung_energy_next_to_accuracy(tiny_prepared, tmp_path):
    """The headline attention figures sit at the top level of metrics_<split>.json."""

    n, size = len(pd.read_csv(tiny_prepared / "manifest.csv")), 64
    yy, xx = np.mgrid[:size, :size]
    lung = (((yy - 32) / 24) ** 2 + ((xx - 32) / 20) ** 2 <= 1).astype(np.uint8) * 255
    np.save(tiny_prepared / f"cache/lungs_{size}.npy", np.repeat(lung[None], n, axis=0))
    row = train(
        TrainConfig(
            stage=1,
            data=tiny_prepared,
            backbone="mobilenet_v2",
            weights="none",
            image_size=64,
            max_epochs=1,
            batch_size=8,
            out=tmp_path,
        ),
        score_split,
    )[0]
    report = evaluate_run(row["run"], "test", n_boot=10, progress=False)
    saved = json.loads((tmp_path / "stage1-mobilenet_v2/metrics_test.json").read_text())
    energy = report["attention"]["lungs"]["energy"]
    assert saved["lung_energy"] == energy.get("mean")  # None only when every CAM was empty
    if energy["n"]:
        assert 0.0 <= saved["lung_energy"] <= 1.0
        assert 0.0 <= saved["lung_pointing_game"] <= 1.0
