"""Static INT8: `export --int8`, the predictor's `onnx-int8` backend, and the agreement gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from cxrguide.cli import main
from cxrguide.errors import CxrGuideError
from cxrguide.inference import quantize
from cxrguide.inference.export import export_run
from cxrguide.inference.onnx_backend import OnnxRunner
from cxrguide.inference.predictor import Predictor
from cxrguide.labels import CLASSES
from cxrguide.models.saved import load_run
from inference_helpers import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    run = tiny_run(tmp_path_factory)
    folder = tmp_path_factory.mktemp("int8")
    fp32 = export_run(run, "onnx", folder / "fp32.onnx").path
    assert main(["export", str(run), "--int8", "--out", str(folder / "int8.onnx")]) == 0
    return {"run": run, "fp32": fp32, "int8": folder / "int8.onnx"}


def _quantized_ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_export_is_quantized_and_agrees_with_fp32(exports):
    int8 = OnnxRunner(exports["int8"])
    assert {"QuantizeLinear", "DequantizeLinear"} <= _quantized_ops(exports["int8"])
    assert int8.metadata["precision"] == "int8"
    assert float(int8.metadata["int8_agreement"]) >= 0.99
    assert int8.metadata["backbone"] == "mobilenet_v2"  # the run facts travel too
    _, info = load_run(exports["run"])
    _, check = quantize.validation_feeds(exports["run"], info)
    agree, diff = quantize.agreement(exports["fp32"], exports["int8"], check)
    assert agree >= 0.99
    assert 0 < diff < 0.05  # quantized (not a copy of fp32), yet close
    assert exports["int8"].stat().st_size < 0.5 * exports["fp32"].stat().st_size


def test_int8_refused_below_the_agreement_leaves_no_file(exports, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "agreement", lambda *a, **k: (0.9, 0.3))
    _, info = load_run(exports["run"])
    calibration, check = quantize.validation_feeds(exports["run"], info)
    out = tmp_path / "int8.onnx"
    with pytest.raises(CxrGuideError, match=r"agrees with fp32 on 90\.0% of 6 validation films"):
        quantize.quantize_checked(exports["fp32"], out, calibration, check)
    assert list(tmp_path.iterdir()) == []


def test_int8_only_for_onnx(exports, tmp_path, capsys):
    assert (
        main(
            [
                "export",
                str(exports["run"]),
                "--format",
                "torchscript",
                "--int8",
                "--out",
                str(tmp_path / "m.pt"),
            ]
        )
        == 2
    )
    assert "int8: only with --format onnx" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_predictor_int8_backend_is_cached_and_close_to_fp32(exports, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRGUIDE_CACHE_DIR", str(tmp_path / "cache"))
    squares = np.random.default_rng(0).random((4, 64, 64), dtype=np.float32)
    fp32 = Predictor(exports["run"], backend="onnx").probabilities(squares)
    int8 = Predictor(exports["run"], backend="onnx-int8")
    assert int8.backend == "onnx-int8"
    np.testing.assert_allclose(int8.probabilities(squares), fp32, atol=0.05)
    cached = sorted((tmp_path / "cache" / "onnx").glob("*.int8.onnx"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    Predictor(exports["run"], backend="onnx-int8")  # the second start reuses the file
    assert cached[0].stat().st_mtime_ns == stamp


def _weight_extremes(path: Path) -> int:
    """The largest |int8 weight| stored in a QDQ file."""
    graph = onnx.load(str(path)).graph
    return max(
        int(np.abs(onnx.numpy_helper.to_array(t).astype(np.int32)).max())
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.INT8
    )


def test_no_int8_reduce_range_gives_8_bit_weights(exports, tmp_path, capsys):
    out = tmp_path / "int8-w8.onnx"
    argv = ["export", str(exports["run"]), "--int8", "--no-int8-reduce-range", "--out", str(out)]
    assert main([*argv, "--min-agreement", "0"]) == 0, capsys.readouterr().err
    assert OnnxRunner(out).metadata["int8_weight_bits"] == "8"
    assert OnnxRunner(exports["int8"]).metadata["int8_weight_bits"] == "7"
    # per-channel scales put each channel's largest weight at the end of the range
    assert _weight_extremes(out) == 127
    assert _weight_extremes(exports["int8"]) == 64  # 7 bits: [-64, 64]


def test_evaluate_scores_the_int8_file_on_test_like_fp32(exports, tmp_path, capsys):
    """`evaluate --onnx` is how the INT8 file's test accuracy is measured beside fp32's."""
    _, info = load_run(exports["run"])
    tables, scored = {}, {}
    for kind in ("fp32", "int8"):
        out = tmp_path / kind
        argv = ["evaluate", "--onnx", str(exports[kind]), "--data", str(info.data)]
        assert main([*argv, "--split", "test", "--bootstrap", "20", "--out", str(out)]) == 0
        scored[kind] = json.loads((out / "metrics_test.json").read_text())
        assert scored[kind]["onnx"]["output"] == "probabilities"
        tables[kind] = pd.read_csv(out / "predictions_test.csv")
    assert "accuracy" in capsys.readouterr().out
    probs = [t[[f"p_{c}" for c in CLASSES]].to_numpy() for t in tables.values()]
    assert len(probs[0]) == 6 and not np.array_equal(probs[0], probs[1])  # really the INT8 graph
    np.testing.assert_allclose(probs[1], probs[0], atol=0.2)  # a 1-epoch net: small margins
    int8 = tables["int8"]
    accuracy = float((int8["predicted"] == int8["true"]).mean())
    assert scored["int8"]["accuracy"] == pytest.approx(accuracy)  # scored from the INT8 answers
