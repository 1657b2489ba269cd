"""Static INT8: `export --int8`, the predictor's `onnx-int8` backend, and the agreement gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from cxrguide.cli import main
from cxrguide.errors import CxrGuideError
from cxrguide.inference import quantize
from cxrguide.inference.export import export_run
from cxrguide.inference.onnx_backend import OnnxRunner
from cxrguide.inference.predictor import Predictor
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
