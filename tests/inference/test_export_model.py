from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cxrguide.core.runs import run_identifier
from cxrguide.errors import CxrGuideError
from cxrguide.inference import export as export_mod
from cxrguide.inference.export import (
    META_FILE,
    ExportModule,
    example_inputs,
    export_onnx,
    export_run,
    parity,
)
from cxrguide.inference.onnx_backend import OnnxRunner
from cxrguide.inference.predictor import Predictor
from cxrguide.models.saved import load_run
from cxrguide.models.zoo import create_model
from inference_helpers import gated_run, tiny_run

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def test_export_module_gate_equals_the_model_gate():
    model = create_model("mobilenet_v2", "none", seed=0).eval()
    module = ExportModule(model, 96, lung_gate=True).eval()
    image, mask = example_inputs(96, True, batch=2)
    with torch.no_grad():
        probs, logits = module(image, mask)
        expected = model(image, mask)
        ungated = model(image)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs, torch.softmax(expected, 1), atol=1e-6, rtol=0)
    assert (logits - ungated).abs().max() > 1e-4
    with pytest.raises(ValueError, match="pass lung_mask"):
        module(image)


def _reference(run: Path, image: torch.Tensor, mask: torch.Tensor | None) -> np.ndarray:
    model, _ = load_run(run)
    with torch.no_grad():
        logits = model(image) if mask is None else model(image, mask)
    return torch.softmax(logits, 1).numpy()


def test_onnx_export_of_a_plain_run(tmp_path_factory, tmp_path):
    run = tiny_run(tmp_path_factory)
    out = tmp_path / "model.onnx"
    result = export_run(run, "onnx", out)
    assert result.inputs == ["image"] and result.max_abs_diff is not None
    assert result.max_abs_diff <= 1e-4
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["classes"] == "Normal,Pneumonia,COVID-19" and meta["image_size"] == "64"
    assert meta["run_id"] == run_identifier(run) and meta["lung_gate"] == "0"
    runner = OnnxRunner(out)
    assert not runner.needs_mask and runner.image_size == 64
    image = torch.rand(5, 1, 64, 64, generator=torch.Generator().manual_seed(3))  # dynamic batch
    np.testing.assert_allclose(runner(image.numpy()), _reference(run, image, None), atol=1e-4)


def test_onnx_export_of_a_gated_run_takes_the_mask(tmp_path_factory, tmp_path):
    run = gated_run(tmp_path_factory)
    out = tmp_path / "gated.onnx"
    result = export_run(run, "onnx", out)
    assert result.inputs == ["image", "lung_mask"] and result.max_abs_diff <= 1e-4
    runner = OnnxRunner(out)
    assert runner.needs_mask and runner.metadata["lung_gate"] == "1"
    image, mask = example_inputs(64, True, batch=3, seed=7)
    mask[1] = 0  # one image without lungs: every feature gated away
    expected = _reference(run, image, mask)
    np.testing.assert_allclose(runner(image.numpy(), mask.numpy()), expected, atol=1e-4)
    with pytest.raises(CxrGuideError, match="gates on the lungs"):
        runner(image.numpy())


def test_torchscript_export(tmp_path_factory, tmp_path):
    run = gated_run(tmp_path_factory)
    out = tmp_path / "gated.pt"
    result = export_run(run, "torchscript", out)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    extra = {META_FILE: ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra[META_FILE])["lung_gate"] == "1"
    image, mask = example_inputs(64, True, batch=2, seed=5)
    with torch.no_grad():
        probs, _ = loaded(image, mask)
    np.testing.assert_allclose(probs.numpy(), _reference(run, image, mask), atol=1e-4)


def test_export_refuses_bad_destinations(tmp_path_factory, tmp_path):
    run = tiny_run(tmp_path_factory)
    with pytest.raises(CxrGuideError, match="is a folder"):
        export_run(run, "onnx", tmp_path)
    with pytest.raises(CxrGuideError, match="output folder does not exist"):
        export_run(run, "onnx", tmp_path / "missing" / "m.onnx")
    with pytest.raises(CxrGuideError, match="format: 'tflite'"):
        export_run(run, "tflite", tmp_path / "m.tflite")
    with pytest.raises(CxrGuideError, match="not a trained run"):
        export_run(tmp_path, "onnx", tmp_path / "m.onnx")


def test_onnx_cache_exports_once_per_model_and_refuses_nothing_when_unwritable(
    tmp_path_factory, tmp_path, monkeypatch
):
    """The predictor's ONNX backend exports a run once (the exporter takes ~20 s), keyed by
    the weights and run facts; an unwritable cache folder means a temp file, not an error."""

    run = tiny_run(tmp_path_factory)
    model, info = load_run(run)
    module = ExportModule(model, 64, False).eval()
    first = export_mod.cached_onnx(module, 64, identity=repr(info), folder=tmp_path / "c")
    assert first is not None and first.parent == tmp_path / "c" and first.suffix == ".onnx"
    sidecar = first.with_suffix(".sha256")  # no temp left behind; the hash beside the file
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name, sidecar.name]
    image = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(
        OnnxRunner(first)(image.numpy()), _reference(run, image, None), atol=1e-4
    )

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(export_mod, "export_onnx", no_export)
    assert export_mod.cached_onnx(module, 64, identity=repr(info), folder=tmp_path / "c") == first
    good = first.read_bytes()
    first.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit changed in the cache
    with pytest.raises(AssertionError, match="exported again"):  # not trusted: rebuilt
        export_mod.cached_onnx(module, 64, identity=repr(info), folder=tmp_path / "c")
    first.write_bytes(good)
    sidecar.unlink()  # an entry without its hash (older versions): rebuilt too
    with pytest.raises(AssertionError, match="exported again"):
        export_mod.cached_onnx(module, 64, identity=repr(info), folder=tmp_path / "c")
    sidecar.write_text(export_mod._file_sha256(first))
    with torch.no_grad():
        next(model.head.parameters()).add_(1.0)  # other weights: another file
    with pytest.raises(AssertionError, match="exported again"):
        export_mod.cached_onnx(module, 64, identity=repr(info), folder=tmp_path / "c")
    monkeypatch.undo()

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    written = []

    def copy_export(module, path, image_size, **kwargs):  # the export itself is tested above
        written.append(path)
        return shutil.copyfile(first, path)

    monkeypatch.setattr(export_mod, "export_onnx", copy_export)
    monkeypatch.setattr("cxrguide.inference.predictor.export_onnx", copy_export)  # its own name
    monkeypatch.setattr(Path, "mkdir", denied)  # what a user without write access meets
    monkeypatch.setenv(export_mod.CACHE_ENV, str(tmp_path / "locked"))
    assert export_mod.cached_onnx(module, 64, folder=tmp_path / "locked") is None
    predictor = Predictor(run, backend="onnx")  # falls back to a private temp file
    try:
        assert predictor._tmp is not None and written[-1].parent == Path(predictor._tmp.name)
        np.testing.assert_allclose(
            predictor.probabilities(image[:, 0].numpy()), _reference(run, image, None), atol=1e-4
        )
    finally:
        predictor.close()


@pytest.mark.slow  # one torch.export based export of a custom network (~20-30 s on 2 cores)
def test_pepx_network_exports_gated_with_parity(tmp_path):
    """COVID-Net's PEPX blocks are our own code, not timm's: the exporter must take them too."""

    model = create_model("covidnet_cxr_small", "none", seed=0).eval()
    module = ExportModule(model, 64, lung_gate=True).eval()
    path = export_onnx(module, tmp_path / "pepx.onnx", 64)
    assert OnnxRunner(path).needs_mask
    assert parity(module, path, "onnx", 64) <= 1e-4


def test_a_failed_parity_check_leaves_no_file(tmp_path_factory, tmp_path, monkeypatch):
    run = tiny_run(tmp_path_factory)
    out = tmp_path / "m.pt"
    monkeypatch.setattr(export_mod, "parity", lambda *a, **k: 0.5)  # a file that disagrees
    with pytest.raises(CxrGuideError, match=r"m\.pt: exported torchscript differs .* not written"):
        export_run(run, "torchscript", out)
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"the user's earlier export")
    with pytest.raises(CxrGuideError):
        export_run(run, "torchscript", out)
    assert out.read_bytes() == b"the user's earlier export" and len(list(tmp_path.iterdir())) == 1
