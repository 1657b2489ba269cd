"""Grad-CAM galleries and the stage comparison on tiny trained runs (64 px, MobileNet V2)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrguide.attention.cam import LUNG_COLOR, cam_map, draw_contour
from cxrguide.data.datasets import Prepared
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.galleries import (
    RunExplainer,
    Sample,
    compare_runs,
    explain_run,
    method_map,
    prepared_samples,
    select_compare,
    select_gallery,
)
from cxrguide.labels import CLASSES
from cxrguide.models.zoo import create_model
from explain_helpers import tiny_runs

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tiny_runs(tmp_path_factory.getbasetemp() / "explain-runs")


def _predictions(rows: list[tuple[str, str, list[float]]]) -> pd.DataFrame:
    table = pd.DataFrame({"image_id": [r[0] for r in rows], "true": [r[1] for r in rows]})
    probs = np.array([r[2] for r in rows])
    table["predicted"] = [CLASSES[k] for k in probs.argmax(1)]
    for k, c in enumerate(CLASSES):
        table[f"p_{c}"] = probs[:, k]
    return table


def test_select_gallery_groups_by_confidence_and_margin():
    preds = _predictions(
        [
            ("a", "Normal", [0.90, 0.05, 0.05]),  # correct, most confident
            ("b", "Normal", [0.60, 0.30, 0.10]),  # correct
            ("c", "Normal", [0.40, 0.38, 0.22]),  # correct but borderline (margin .02)
            ("d", "Normal", [0.10, 0.85, 0.05]),  # confident mistake
            ("e", "Normal", [0.30, 0.38, 0.32]),  # mistake, margin .06
            ("f", "COVID-19", [0.20, 0.10, 0.70]),
        ]
    )
    one = select_gallery(preds, per_group=1)
    picked = {(r.true, r.group): r.image_id for r in one.itertuples()}
    assert picked == {
        ("Normal", "correct"): "a",
        ("Normal", "mistake"): "d",
        ("Normal", "borderline"): "c",
        ("COVID-19", "correct"): "f",
    }
    two = select_gallery(preds, per_group=2)
    normal = two[two.true == "Normal"]
    assert list(normal[normal.group == "correct"].image_id) == ["a", "b"]
    assert list(normal[normal.group == "mistake"].image_id) == ["d", "e"]
    assert list(normal[normal.group == "borderline"].image_id) == ["c"]  # no image twice
    assert normal.set_index("image_id").margin["c"] == pytest.approx(0.02)
    assert normal.set_index("image_id").confidence["d"] == pytest.approx(0.85)


def test_select_compare_follows_the_last_run_on_common_images():
    first = _predictions(
        [
            ("a", "Normal", [0.9, 0.05, 0.05]),
            ("b", "Normal", [0.2, 0.7, 0.1]),
            ("c", "Pneumonia", [0.3, 0.6, 0.1]),
        ]
    )
    last = _predictions(
        [
            ("a", "Normal", [0.4, 0.5, 0.1]),
            ("b", "Normal", [0.8, 0.1, 0.1]),
            ("c", "Pneumonia", [0.2, 0.7, 0.1]),
            ("z", "Normal", [0.99, 0.0, 0.01]),
        ]
    )  # z: only in the last run
    assert select_compare([first, last], per_class=1) == ["b", "c"]
    assert select_compare([first, last], per_class=5) == ["b", "a", "c"]


def test_panel_agrees_with_predictions_csv_and_draws_the_lung_contour(runs):
    explainer = RunExplainer(runs["stage2"], device="cpu")
    preds = pd.read_csv(runs["stage2"] / "predictions_test.csv").set_index("image_id")
    prepared = Prepared.open(runs["prep"])
    keys = list(preds.index[:3])
    for sample in prepared_samples(prepared, keys):
        panel = explainer.panel(sample)
        row = preds.loc[sample.key]
        assert sample.true == row["true"] and panel.predicted == row["predicted"]
        for c in CLASSES:
            assert panel.probs[c] == pytest.approx(row[f"p_{c}"], abs=1e-5)
        ring = draw_contour(np.zeros((64, 64, 3), np.uint8), sample.lung) == LUNG_COLOR
        magenta = np.all(panel.overlay == LUNG_COLOR, axis=-1)
        assert np.array_equal(magenta, ring.all(-1)) and magenta.sum() > 50
        heat = cam_map(explainer.model, sample.image, CLASSES.index(panel.predicted))
        assert heat.std() > 0  # the overlay is the predicted class's heatmap over the film
        inside = ~magenta
        assert panel.overlay[inside].std() > 5


def test_gated_run_needs_masks_and_gates_its_cam(runs):
    explainer = RunExplainer(runs["stage3"], device="cpu")
    assert explainer.info.lung_gate
    sample = prepared_samples(Prepared.open(runs["prep"]), ["synthetic:images/Normal-10.png"])[0]
    with pytest.raises(CxrGuideError, match="gates on lung masks"):
        explainer.panel(Sample(sample.key, sample.image, None, sample.true))
    panel = explainer.panel(sample)
    x = torch.from_numpy(sample.image)[None, None]
    lung = torch.from_numpy(sample.lung.astype(np.float32))[None, None]
    with torch.no_grad():
        p = torch.softmax(explainer.model(x, lung), 1)[0].numpy()
    assert [panel.probs[c] for c in CLASSES] == pytest.approx(p.tolist(), abs=1e-6)
    with pytest.raises(CxrGuideError, match="method: 'nope' unknown"):
        RunExplainer(runs["stage3"], method="nope")


def test_scorecam_matches_a_hand_computed_score_cam():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", "none", seed=0).eval()
    image = np.random.default_rng(1).random((48, 48)).astype(np.float32)
    heat = method_map(model, image, 2, method="scorecam")
    x = torch.from_numpy(image)[None, None]
    with torch.no_grad():
        feats = model.forward_features(x)  # (1, C, 2, 2): the map feature_tap sees
        up = torch.nn.UpsamplingBilinear2d(size=(48, 48))(feats)[0]
        lo = up.flatten(1).min(1)[0][:, None, None]
        hi = up.flatten(1).max(1)[0][:, None, None]
        masks = (up - lo) / (hi - lo + 1e-8)
        scores = torch.cat([model(x * m[:, None]) for m in masks.split(256)])[:, 2]
        cam = torch.relu((torch.softmax(scores, 0)[:, None, None] * feats[0]).sum(0)).numpy()
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    cam = cv2.resize(cam.astype(np.float32), (48, 48))
    cam = cam - cam.min()  # the library min-max scales again after resizing
    cam = cam / (cam.max() + 1e-7)
    np.testing.assert_allclose(heat, cam, atol=1e-4)


def test_explain_run_writes_galleries_and_an_index(runs, tmp_path):
    index = explain_run(runs["stage2"], tmp_path, per_group=1, device="cpu")
    preds = pd.read_csv(runs["stage2"] / "predictions_test.csv")
    chosen = select_gallery(preds, per_group=1)
    figures = {f["file"]: f for f in index["figures"]}
    assert set(figures) == {f"gallery_{c.lower()}.png" for c in CLASSES}
    for label in CLASSES:
        fig = figures[f"gallery_{label.lower()}.png"]
        want = chosen[chosen.true == label]
        assert [(i["image"], i["group"]) for i in fig["items"]] == list(
            zip(want.image_id, want.group, strict=True)
        )
        assert all(i["true"] == label for i in fig["items"])
        assert "lung contour from" in fig["caption"] and "Grad-CAM" in fig["caption"]
        png = np.asarray(Image.open(tmp_path / fig["file"]).convert("RGB"))
        assert png.shape[0] > 300 and png.std() > 20
        assert np.all(png == LUNG_COLOR, axis=-1).sum() > 100  # the contour made it to the PNG
    assert json.loads((tmp_path / "explain.json").read_text()) == index
    with pytest.raises(CxrGuideError, match="predictions_val2.csv: not found"):
        explain_run(runs["stage2"], tmp_path, split="val2")


def test_compare_runs_puts_the_same_films_under_each_stage(runs, tmp_path):
    stages = [runs["stage1"], runs["stage2"], runs["stage3"]]
    explain_run(runs["stage1"], tmp_path, ["synthetic:images/COVID-19-3.png"], device="cpu")
    index = compare_runs(stages, tmp_path, per_class=1, device="cpu")
    files = [f["file"] for f in index["figures"]]
    assert files == ["images.png", "compare.png"]  # merged into the existing index
    fig = index["figures"][1]
    preds = [pd.read_csv(r / "predictions_test.csv").set_index("image_id") for r in stages]
    want = select_compare([p.reset_index() for p in preds], per_class=1)
    assert [i["image"] for i in fig["items"]] == want and len(want) == 3
    for item in fig["items"]:
        assert [r["run"] for r in item["runs"]] == [str(s) for s in stages]
        for r, p in zip(item["runs"], preds, strict=True):
            assert r["predicted"] == p.loc[item["image"], "predicted"]
            assert r["probability"] == pytest.approx(
                p.loc[item["image"], f"p_{r['predicted']}"], abs=1e-4
            )
    png = np.asarray(Image.open(tmp_path / "compare.png").convert("RGB"))
    assert png.shape[1] >= 4 * 200 and png.shape[0] >= 3 * 200  # film + 3 runs, 3 films
    with pytest.raises(CxrGuideError, match="at least two runs"):
        compare_runs(stages[:1], tmp_path)
