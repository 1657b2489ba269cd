"""`cxrguide export RUN --format onnx|torchscript --out FILE`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrguide.cli import main
from cxrguide.inference.onnx_backend import OnnxRunner
from cxrguide.models.saved import load_run
from inference_helpers import tiny_run

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def test_onnx_and_torchscript(tmp_path_factory, tmp_path, capsys):
    run = tiny_run(tmp_path_factory)
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(run), "--out", str(onnx_file)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {onnx_file} (onnx; inputs image;" in out and "max |dp| vs PyTorch" in out
    image = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    model, _ = load_run(run)
    with torch.no_grad():
        expected = torch.softmax(model(image), 1).numpy()
    np.testing.assert_allclose(OnnxRunner(onnx_file)(image.numpy()), expected, atol=1e-4)

    ts_file = tmp_path / "m.pt"
    args = ["export", str(run), "--format", "torchscript", "--out", str(ts_file), "--no-check"]
    assert main(args) == 0
    assert "not checked" in capsys.readouterr().out
    with torch.no_grad():
        got = torch.jit.load(str(ts_file))(image)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_errors_exit_2(tmp_path_factory, tmp_path, capsys):
    run = tiny_run(tmp_path_factory)
    assert main(["export", str(run)]) == 2
    assert "give RUN and --out FILE" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "no" / "m.onnx")]) == 2
    assert "output folder does not exist" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx"), "--opset", "7"]) == 2
    assert "opset" in capsys.readouterr().err
