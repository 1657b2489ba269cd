from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cxr_testutils import chest_like, dicom_film
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.data.imaging import ImageInfo
from cxrguide.errors import CxrGuideError, ImageReadError
from cxrguide.evaluation.evaluate import predict_split
from cxrguide.inference.backends import CPU_DEFAULT, bf16_supported, resolve_backend
from cxrguide.inference.predictor import Failure, Prediction, Predictor, collect_inputs
from cxrguide.inference.run_summary import public_source
from cxrguide.labels import CLASSES
from cxrguide.lungs.metrics import MaskQuality
from inference_helpers import film, gated_run, lung_run, tiny_prepared, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor(run, backend="fp32")


def test_files_are_preprocessed_like_the_training_cache(predictor, tmp_path_factory, tmp_path):
    """A cached training image saved as PNG gets the probabilities evaluate gives its row."""
    prepared = Prepared.open(tiny_prepared(tmp_path_factory))
    dataset = CxrDataset(prepared, "test", image_size=64)
    expected, rows = predict_split(predictor.model, dataset, torch.device("cpu"), progress=False)
    paths = []
    for row in rows:
        paths.append(tmp_path / f"row{row}.png")
        Image.fromarray(np.asarray(prepared.images[row])).save(paths[-1])
    got = list(predictor.predict_files(paths, batch_size=4))
    assert all(isinstance(p, Prediction) for p in got)
    probs = np.array([[p.probabilities[c] for c in CLASSES] for p in got])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert [p.label for p in got] == [CLASSES[k] for k in expected.argmax(1)]


def test_backends_agree_with_eager_fp32(run, predictor, tmp_path):
    squares = np.stack([predictor.read(film(tmp_path / f"f{i}.png", seed=i))[0] for i in range(6)])
    reference = predictor.probabilities(squares)
    np.testing.assert_allclose(reference.sum(1), 1.0, atol=1e-6)
    for backend, tol in (("channels_last", 1e-5), ("onnx", 1e-4), ("bf16", 2e-2)):
        other = Predictor(run, backend=backend)
        try:
            assert other.backend == backend
            np.testing.assert_allclose(other.probabilities(squares), reference, atol=tol)
        finally:
            other.close()


def test_auto_backend_and_bad_names():
    cpu = torch.device("cpu")
    expected = CPU_DEFAULT if CPU_DEFAULT != "bf16" or bf16_supported() else "channels_last"
    assert resolve_backend("auto", cpu) == expected
    assert resolve_backend("auto", torch.device("cuda")) == "fp32"
    assert resolve_backend("onnx", cpu) == "onnx"
    with pytest.raises(CxrGuideError, match="backend: 'fast'"):
        resolve_backend("fast", cpu)


def test_collect_inputs_walks_folders_and_reports_missing(tmp_path):
    root = tmp_path / "in"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    film(root / "one.png")
    film(root / "a" / "two.jpg")
    film(root / "a" / "b" / "scan")  # DICOM without a suffix: found by its magic bytes
    film(root / ".hidden" / "skip.png")
    (root / "a" / "notes.csv").write_text("x,y\n")
    (root / "empty").mkdir()
    files, failures = collect_inputs([root, tmp_path / "nope.png", root / "empty"])
    names = [f.relative_to(root).as_posix() for f in files]
    assert names == ["a/b/scan", "a/two.jpg", "one.png"]
    assert failures == [
        Failure(str(tmp_path / "nope.png"), "file not found"),
        Failure(str(root / "empty"), "folder holds no image files"),
    ]


def test_bad_files_come_out_in_order_with_reasons(run, tmp_path):
    predictor = Predictor(run, backend="fp32", max_pixels=100 * 100)
    good = [film(tmp_path / f"g{i}.png", seed=i) for i in range(3)]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    big = film(tmp_path / "big.png", width=128, height=128)
    text = tmp_path / "text.png"
    text.write_text("not an image")
    order = [good[0], corrupt, good[1], big, text, good[2]]
    out = list(predictor.predict_files(order, batch_size=2))
    assert [r.source for r in out] == [str(p) for p in order]
    kinds = [type(r).__name__ for r in out]
    assert kinds == ["Prediction", "Failure", "Prediction", "Failure", "Failure", "Prediction"]
    assert out[3].reason.startswith("too many pixels") and "not an image" in out[4].reason
    assert out[1].reason  # a reason for every failure


def test_dicom_and_jpeg_inputs(predictor, tmp_path):
    dcm = predictor.predict_file(film(tmp_path / "x.dcm"))
    jpg = predictor.predict_file(film(tmp_path / "x.jpg"))
    assert dcm.info.format == "DICOM" and jpg.info.format == "JPEG"
    for p in (dcm, jpg):
        assert p.image.shape == (64, 64) and p.label in CLASSES and p.lung is None
        assert abs(sum(p.probabilities.values()) - 1) < 1e-5


def test_gated_run_needs_and_uses_its_lung_model(tmp_path_factory, tmp_path):
    gated = gated_run(tmp_path_factory)
    predictor = Predictor(gated, backend="fp32")
    assert predictor.segmenter.run == (gated / "lungs").resolve()  # its own copy, inside it
    pred = predictor.predict_file(film(tmp_path / "f.png"))
    assert pred.lung is not None and pred.lung.flag == "ok" and 0.15 < pred.lung.area_fraction < 0.6
    assert pred.mask is not None and pred.mask.shape == (64, 64) and pred.mask.dtype == np.bool_
    x = torch.from_numpy(pred.image)[None, None]
    m = torch.from_numpy(pred.mask.astype(np.float32))[None, None]
    with torch.no_grad():
        gated_p = torch.softmax(predictor.model(x, m), 1)[0].numpy()
        plain_p = torch.softmax(predictor.model(x), 1)[0].numpy()
    got = np.array([pred.probabilities[c] for c in CLASSES])
    np.testing.assert_allclose(got, gated_p, atol=1e-6)
    assert np.abs(gated_p - plain_p).max() > 1e-4  # the mask really entered the forward pass
    onnx = Predictor(gated, backend="onnx")
    try:
        np.testing.assert_allclose(
            onnx.probabilities(pred.image[None], pred.mask[None]), gated_p[None], atol=1e-4
        )
    finally:
        onnx.close()

    moved = tmp_path / "moved"
    moved.mkdir()
    for f in ("model.pt", "model.yaml"):
        (moved / f).write_bytes((gated / f).read_bytes())
    text = (moved / "model.yaml").read_text()
    (moved / "model.yaml").write_text(re.sub(r"lung_model: .*", "lung_model: gone/run", text))
    with pytest.raises(CxrGuideError, match="lung_model 'gone/run' was not found in the run"):
        Predictor(moved)
    (moved / "model.yaml").write_text(re.sub(r"lung_model: .*", "lung_model: ''", text))
    with pytest.raises(CxrGuideError, match="gates on lung masks but names no lung model"):
        Predictor(moved)
    assert Predictor(moved, lung_model=lung_run(tmp_path_factory), backend="fp32").info.lung_gate


def test_ungated_run_with_a_lung_model_reports_coverage_only(
    run, predictor, tmp_path_factory, tmp_path
):
    with_lungs = Predictor(run, backend="fp32", lung_model=lung_run(tmp_path_factory))
    path = film(tmp_path / "f.png")
    a, b = with_lungs.predict_file(path), predictor.predict_file(path)
    assert a.lung is not None and b.lung is None
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-7)


def test_describe_and_run_id(run, predictor, tmp_path_factory):
    d = predictor.describe()
    assert re.fullmatch(r"stage1-mobilenet_v2@[0-9a-f]{12}", d["run_id"])
    assert (
        d["classes"] == list(CLASSES) and d["image_size"] == 64 and d["backbone"] == "mobilenet_v2"
    )
    data = d["training_data"]
    assert data["images"] == 36 and data["train_by_class"] == dict.fromkeys(CLASSES, 8)
    assert data["sources"] == ["synthetic"] and data["test_metrics"]["n"] == 6
    assert d["weights_source"] == "random"
    assert (
        public_source("imagenet:/srv/w/mobilenetv2.safetensors")
        == "imagenet:mobilenetv2.safetensors"
    )


def test_concurrent_calls_match_serial_ones(predictor, tmp_path):
    paths = [film(tmp_path / f"c{i}.png", seed=i) for i in range(6)]
    serial = [predictor.predict_file(p).probabilities for p in paths]
    results: dict[int, dict] = {}

    def work(i: int) -> None:
        results[i] = predictor.predict_file(paths[i]).probabilities

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(paths))] == serial


def test_not_a_run(tmp_path):
    with pytest.raises(CxrGuideError, match="not a trained run"):
        Predictor(tmp_path)


def test_auto_falls_back_to_eager_when_onnx_export_fails(run, monkeypatch):
    def broken(self, int8=False):
        raise RuntimeError("unsupported operator aten::weird")

    monkeypatch.setattr(Predictor, "_export_onnx", broken)
    if resolve_backend("auto", torch.device("cpu")) == "onnx":
        with pytest.warns(UserWarning, match="ONNX export failed .*aten::weird.*eager fp32"):
            assert Predictor(run, device="cpu").backend == "fp32"
    with pytest.raises(CxrGuideError, match="ONNX export failed"):
        Predictor(run, backend="onnx")


def test_unreliable_when_lung_mask_implausible_or_film_lateral():
    frontal = ImageInfo("a.dcm", "DICOM", 100, 100, 12, "MONOCHROME2", "PA", "DX")
    probs = {"Normal": 0.8, "Pneumonia": 0.1, "COVID-19": 0.1}
    ok = Prediction("a", "Normal", probs, MaskQuality(0.3, 2, 2, "ok"), frontal, None, None)
    assert ok.reliable and ok.record("r")["warnings"] == ""
    odd = Prediction(
        "a", "Normal", probs, MaskQuality(0.9, 5, 1, "implausible"), frontal, None, None
    )
    assert not odd.reliable and odd.record("r")["reliable"] is False
    assert odd.warnings == [
        "lung mask implausible (coverage 0.90, 1 lung(s)): not a usable frontal chest film?"
    ]
    lateral = ImageInfo("b.dcm", "DICOM", 100, 100, 12, "MONOCHROME2", "LL", "CR")
    side = Prediction("b", "COVID-19", probs, None, lateral, None, None)
    assert not side.reliable and "lateral view (LL)" in side.warnings[0]


def test_lungs_only_run_lists_an_empty_lung_mask_as_a_failure(tmp_path_factory, tmp_path):
    """A run that blanks the film outside the lungs (issue 16) never classifies a film whose
    mask came out empty: predict lists it with the reason, a single file raises one line."""

    run = tmp_path / "stage3-lung-input"
    shutil.copytree(gated_run(tmp_path_factory), run)
    info = yaml.safe_load((run / "model.yaml").read_text())
    info.update(lung_inputs=["input"], lung_dilation=0.05, attention=["lung-input"])
    (run / "model.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    pred = Predictor(run, backend="fp32")
    assert pred.model.lung_inputs == ("input",) and pred.info.strict_lungs
    squares = np.stack([pred.read(film(tmp_path / f"f{k}.png", seed=k))[0] for k in range(2)])
    infos = [pred.read(tmp_path / "f0.png")[1]] * 2
    masks, flags = pred.segment(squares, infos)
    masks[1] = False  # the segmenter found no lungs on the second film
    pred.segment = lambda s, i: (masks[: len(s)], flags[: len(s)])
    first, second = pred.predict_arrays(squares, infos, ["a", "b"])
    assert isinstance(first, Prediction) and isinstance(second, Failure)
    assert second.source == "b" and "empty lung mask" in second.reason
    expected = pred.probabilities(squares[:1], masks[:1])[0]
    assert [first.probabilities[c] for c in CLASSES] == pytest.approx(expected.tolist())
    pred.segment = lambda s, i: (np.zeros_like(masks[: len(s)]), flags[: len(s)])
    with pytest.raises(ImageReadError, match="empty lung mask"):
        pred.predict_file(tmp_path / "f0.png")


def test_png_and_same_pixel_dicoms_get_the_same_probabilities(predictor, tmp_path):
    """One intensity rule: 8-bit, 16-bit, MONOCHROME1 and padded DICOMs of a PNG's pixels."""

    arr = chest_like(150, 130)
    Image.fromarray(arr).save(tmp_path / "f.png")
    wide = arr.astype(np.uint16) * 16 + 5  # 12-bit values
    Image.fromarray(wide).save(tmp_path / "f16.png")  # a 16-bit PNG: by its range, as a DICOM
    padded = wide.copy()
    padded[:, :10] = 0  # padding, marked as such in the DICOM
    valid = wide[:, 10:].astype(np.float64)
    shown = np.zeros(wide.shape, np.uint8)  # what the padded DICOM means, as an 8-bit PNG
    shown[:, 10:] = np.round((valid - valid.min()) / np.ptp(valid) * 255)
    Image.fromarray(shown).save(tmp_path / "pad.png")
    pairs = [
        ("f.png", dicom_film(tmp_path / "a8.dcm", arr)),
        (
            "f.png",
            dicom_film(
                tmp_path / "m1.dcm",
                (255 - arr).astype(np.uint8),
                "MONOCHROME1",
                BurnedInAnnotation="YES",
            ),
        ),
        ("f16.png", dicom_film(tmp_path / "a16.dcm", wide, bits=12)),
        ("pad.png", dicom_film(tmp_path / "pad.dcm", padded, bits=12, PixelPaddingValue=0)),
    ]
    for png, dcm in pairs:
        a, b = predictor.predict_file(tmp_path / png), predictor.predict_file(dcm)
        assert np.abs(a.image - b.image).max() <= 1 / 255 + 1e-6
        for c in CLASSES:
            assert abs(a.probabilities[c] - b.probabilities[c]) < 1e-3
    burned = predictor.predict_file(pairs[1][1]).record(predictor.run_id)
    assert burned["reliable"] is False and burned["warnings"].startswith("burned_in_annotation: ")
