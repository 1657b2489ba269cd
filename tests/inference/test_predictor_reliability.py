"""Predict / serve / export with a run's reliability statistics, and with an old run without."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from cxrguide.core.reliability import RELIABILITY_FILE, Reliability, save_reliability, softmax
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.evaluation.ood import fit_mahalanobis
from cxrguide.evaluation.reliability import forward_split
from cxrguide.inference.export import ExportModule, export_run, run_metadata
from cxrguide.inference.onnx_backend import OnnxRunner
from cxrguide.inference.predictor import Predictor
from cxrguide.labels import CLASSES
from cxrguide.serve.app import create_app
from inference_helpers import film, tiny_prepared, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread_per_module")
T = 2.5
W, B = np.array([0.5, 2.0, 1.0]), np.array([0.3, -0.1, -0.2])  # a vector scaling


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.pt", RELIABILITY_FILE))
    shutil.copy(src / "model.pt", dst / "model.pt")
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``old``: no statistics; ``fitted``: T = 2.5, OOD statistics from the run's train films
    and a threshold at their 90th percentile."""
    src = tiny_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("reliable-runs")
    old, fitted = _copy(src, root / "old"), _copy(src, root / "fitted")
    pred = Predictor(fitted, backend="fp32")
    prepared = Prepared.open(tiny_prepared(tmp_path_factory))
    data = CxrDataset(prepared, "train", image_size=64)
    _, feats, rows = forward_split(pred.model, data, torch.device("cpu"), progress=False)
    rel = Reliability(temperature=T, confidence_threshold=0.9, n_val=30)
    rel.means, rel.precision = fit_mahalanobis(feats, data.labels[rows], len(CLASSES))
    rel.ood_threshold = float(np.quantile(rel.ood_scores(feats), 0.9))
    save_reliability(fitted, rel)
    vector = _copy(src, root / "vector")
    rel.vector_scale, rel.vector_bias, rel.calibration = W, B, "vector"
    save_reliability(vector, rel)
    return {"old": old, "fitted": fitted, "vector": vector}


def test_an_old_run_predicts_with_one_warning(runs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        pred = Predictor(runs["old"], backend="fp32")
    lines = [r for r in caplog.records if RELIABILITY_FILE in r.getMessage()]
    assert len(lines) == 1 and "uncalibrated" in lines[0].getMessage()
    row = pred.predict_file(film(tmp_path / "a.png")).record(pred.run_id)
    assert row["calibrated"] is False and row["ood_score"] is None
    assert row["reliable"] is True and row["warnings"] == ""


def test_fitted_run_scales_probabilities_and_scores_ood(runs, tmp_path):
    pred, plain = Predictor(runs["fitted"], backend="fp32"), Predictor(runs["old"], backend="fp32")
    squares = np.stack([pred.read(film(tmp_path / f"f{i}.png", seed=i))[0] for i in range(4)])
    probs, logits, _ = pred.outputs(squares)
    np.testing.assert_allclose(probs, softmax(logits.astype(np.float64) / T), atol=1e-6)
    np.testing.assert_allclose(
        plain.probabilities(squares), softmax(logits.astype(np.float64)), atol=1e-6
    )
    results = pred.predict_arrays(squares, [pred.read(tmp_path / "f0.png")[1]] * 4, ["x"] * 4)
    for r in results:
        row = r.record(pred.run_id)
        assert row["calibrated"] is True and isinstance(row["ood_score"], float)
        assert r.out_of_distribution == (r.ood_score > pred.reliability.ood_threshold)
    # synthetic films look nothing like the blob phantoms the run was trained on
    far = [r for r in results if r.out_of_distribution]
    assert far and all(
        not r.reliable and r.warnings[-1].startswith("out_of_distribution") for r in far
    )


def test_vector_scaling_is_applied_by_predict_and_export(runs, tmp_path):
    pred = Predictor(runs["vector"], backend="fp32")
    squares = np.stack([pred.read(film(tmp_path / f"v{i}.png", seed=i))[0] for i in range(3)])
    probs, logits, _ = pred.outputs(squares)
    np.testing.assert_allclose(probs, softmax(logits.astype(np.float64) * W + B), atol=1e-6)
    assert pred.describe()["calibration"] == "vector" and pred.calibrated
    module = ExportModule(pred.model, 64, False, calibration=pred.reliability).eval()
    with torch.no_grad():
        p_mod = module(torch.from_numpy(squares[:, None].astype(np.float32)))[0].numpy()
    np.testing.assert_allclose(p_mod, probs, atol=1e-5)  # the graph applies the same map
    result = export_run(runs["vector"], "torchscript", tmp_path / "v.pt")
    assert result.max_abs_diff < 1e-4  # parity against eager w * logits + b
    meta = run_metadata(pred.info, pred.run_id, pred.reliability)
    assert meta["calibration"] == "vector"
    np.testing.assert_allclose([float(v) for v in meta["calibration_scale"].split(",")], W)
    np.testing.assert_allclose([float(v) for v in meta["calibration_bias"].split(",")], B)


def test_abstain_labels_unreliable_and_unsure_films(runs, tmp_path):
    pred = Predictor(runs["fitted"], backend="fp32", abstain=True)
    rows = [p.record(pred.run_id) for p in pred.predict_files([film(tmp_path / "a.png")])]
    p = rows[0]
    unsure = max(p[f"p_{c}"] for c in CLASSES) < 0.9
    assert (p["label"] == "abstain") == (unsure or not p["reliable"])
    assert p["model_label"] in CLASSES


@pytest.mark.slow  # two ONNX exports
def test_onnx_backend_and_export_carry_the_temperature(runs, tmp_path):
    eager, onnx = (
        Predictor(runs["fitted"], backend="fp32"),
        Predictor(runs["fitted"], backend="onnx"),
    )
    squares = np.stack([eager.read(film(tmp_path / f"g{i}.png", seed=i))[0] for i in range(3)])
    p_e, z_e, f_e = eager.outputs(squares)
    p_o, z_o, f_o = onnx.outputs(squares)
    np.testing.assert_allclose(p_o, p_e, atol=1e-4)
    np.testing.assert_allclose(f_o, f_e, atol=1e-3, rtol=1e-3)
    result = export_run(runs["fitted"], "onnx", tmp_path / "m.onnx")
    assert result.max_abs_diff < 1e-4  # parity against eager logits / T
    runner = OnnxRunner(tmp_path / "m.onnx")
    assert (
        float(runner.metadata["temperature"]) == T
        and runner.metadata["calibration"] == "temperature"
    )
    x = squares[:, None].astype(np.float32)
    out = runner.outputs(x)
    assert "features" not in out
    np.testing.assert_allclose(out["probabilities"], softmax(out["logits"] / T), atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], p_e, atol=1e-4)


def test_serve_returns_the_fields(runs, tmp_path):
    for name, calibrated in (("fitted", True), ("old", False)):
        client = TestClient(
            create_app(Predictor(runs[name], backend="fp32")), base_url="http://localhost"
        )
        with client:
            path = film(tmp_path / f"{name}.png")
            reply = client.post("/v1/predict", files={"file": (path.name, path.read_bytes())})
        body = reply.json()
        assert reply.status_code == 200 and body["calibrated"] is calibrated
        assert (body["ood_score"] is None) == (not calibrated)
