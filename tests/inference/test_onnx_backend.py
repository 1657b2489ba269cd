from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrguide.errors import CxrGuideError
from cxrguide.inference.onnx_backend import OnnxRunner

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*legacy TorchScript-based ONNX export:DeprecationWarning",
    "ignore:The feature will be removed:DeprecationWarning",
)


class _Tiny(nn.Module):
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.stack(
            [image.mean((1, 2, 3)), image.amax((1, 2, 3)), -image.mean((1, 2, 3))], 1
        )
        return torch.softmax(logits, 1), logits


def _export(module: nn.Module, path, inputs: list[str], outputs: list[str]) -> None:
    torch.onnx.export(
        module.eval(),
        (torch.rand(2, 1, 8, 8),),
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes={inputs[0]: {0: "b"}},
        dynamo=False,
    )


def test_runner_returns_the_probabilities_output(tmp_path):
    path = tmp_path / "tiny.onnx"
    _export(_Tiny(), path, ["image"], ["probabilities", "logits"])
    runner = OnnxRunner(path, threads=1)
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    expected = _Tiny()(torch.from_numpy(x))[0].numpy()
    got = runner(x)
    assert got.dtype == np.float32 and got.shape == (4, 3)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_runner_refuses_foreign_graphs_and_bad_files(tmp_path):
    foreign = tmp_path / "foreign.onnx"
    _export(_Tiny(), foreign, ["input"], ["probabilities", "logits"])
    with pytest.raises(CxrGuideError, match="not those of 'cxrguide export'"):
        OnnxRunner(foreign)
    no_probs = tmp_path / "no_probs.onnx"
    _export(_Tiny(), no_probs, ["image"], ["p", "l"])
    with pytest.raises(CxrGuideError, match="no 'probabilities' output"):
        OnnxRunner(no_probs)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(CxrGuideError, match="not a valid ONNX model"):
        OnnxRunner(junk)
    with pytest.raises(CxrGuideError, match="no such ONNX model file"):
        OnnxRunner(tmp_path / "missing.onnx")
