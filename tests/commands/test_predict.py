"""`cxrguide predict RUN INPUT...`: table / JSON / CSV, folders, DICOM, --cam, bad files -> 2."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrguide.cli import main
from cxrguide.inference.predictor import Predictor
from cxrguide.labels import CLASSES
from inference_helpers import film, gated_run, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    (root / "nested" / "deeper").mkdir(parents=True)
    film(root / "a.png", seed=1)
    film(root / "nested" / "b.jpg", seed=2)
    film(root / "nested" / "deeper" / "c.dcm", seed=3)
    (root / "nested" / "readme.txt").write_text("not an image, not picked from a folder")
    return root


def _expected(run: Path, files: list[Path]) -> dict[str, dict[str, float]]:
    predictor = Predictor(run, backend="fp32")
    return {str(f): predictor.predict_file(f).probabilities for f in files}


def test_json_for_a_folder_tree(run, inputs, capsys):
    assert main(["predict", str(run), str(inputs), "--json", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    files = [inputs / "a.png", inputs / "nested" / "b.jpg", inputs / "nested" / "deeper" / "c.dcm"]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    expected = _expected(run, files)
    for r in rows:
        assert r["probabilities"] == pytest.approx(expected[r["file"]], abs=2e-2)  # auto backend
        assert r["label"] in CLASSES and r["run_id"].startswith("stage1-mobilenet_v2@")
        assert r["lung_coverage"] is None and r["lung_quality"] is None
        assert r["reliable"] is True and r["warnings"] == []


def test_csv_and_table_with_the_fp32_backend(run, inputs, capsys, tmp_path):
    files = [inputs / "a.png", inputs / "nested" / "b.jpg"]
    expected = _expected(run, files)
    out = tmp_path / "out.csv"
    args = ["predict", str(run), *map(str, files), "--backend", "fp32", "--no-progress"]
    assert main([*args, "--csv", "--output", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["file", "label", "p_Normal", "p_Pneumonia", "p_COVID-19",
                             "lung_coverage", "lung_quality", "reliable", "warnings", "ood_score",
                             "calibrated", "run_id"]  # fmt: skip
    for r in rows:
        got = {c: float(r[f"p_{c}"]) for c in CLASSES}
        assert got == pytest.approx(expected[r["file"]], abs=1e-5)
        assert r["label"] == max(got, key=got.get)
    assert main([*args, "--batch-size", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["file", "label"] and len(table) == 4
    assert table[1].startswith(str(files[0])) and "not a diagnosis" in table[-1]


def test_bad_files_are_listed_and_give_exit_2(run, inputs, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tiny)
    code = main(["predict", str(run), str(inputs / "a.png"), str(bad), str(tiny),
                 str(tmp_path / "missing.dcm"), "--json", "--no-progress"])  # fmt: skip
    assert code == 2
    captured = capsys.readouterr()
    assert [r["file"] for r in json.loads(captured.out)] == [str(inputs / "a.png")]
    err = captured.err
    assert f"skipped {tmp_path / 'missing.dcm'}: file not found" in err
    assert f"skipped {bad}:" in err and f"skipped {tiny}: too small" in err
    assert "3 input(s) could not be used; 1 labelled" in err


def test_dicom_with_a_cut_jpeg_frame_is_skipped_not_classified(run, inputs, tmp_path, capsys):
    from cxr_testutils import jpeg_dicom

    cut = jpeg_dicom(tmp_path / "cut.dcm", keep=0.5)
    code = main(["predict", str(run), str(inputs / "a.png"), str(cut), "--json", "--no-progress"])
    assert code == 2
    captured = capsys.readouterr()
    assert [r["file"] for r in json.loads(captured.out)] == [str(inputs / "a.png")]
    assert f"skipped {cut}: DICOM JPEG frame: truncated image data (the last" in captured.err


def test_cam_overlays_and_lung_columns_for_a_gated_run(tmp_path_factory, inputs, tmp_path, capsys):
    run = gated_run(tmp_path_factory)
    capsys.readouterr()  # drop what building the run printed (when this test builds it)
    cams = tmp_path / "cams"
    same_stem = tmp_path / "other"
    same_stem.mkdir()
    film(same_stem / "a.png", seed=9)
    code = main(["predict", str(run), str(inputs / "a.png"), str(same_stem / "a.png"), "--cam",
                 str(cams), "--json", "--no-progress", "--backend", "fp32"])  # fmt: skip
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in cams.iterdir()) == ["a_2_cam.png", "a_cam.png"]
    assert [Path(r["cam"]).name for r in rows] == ["a_cam.png", "a_2_cam.png"]
    for r in rows:
        assert r["lung_quality"] == "ok" and 0.15 < r["lung_coverage"] < 0.6
        rgb = np.asarray(Image.open(r["cam"]))
        assert rgb.shape == (64, 64, 3)
        assert np.all(rgb == (255, 0, 255), axis=-1).sum() > 20  # the lung contour is drawn


def test_usage_errors(run, tmp_path, capsys):
    assert main(["predict", str(tmp_path), str(tmp_path)]) == 2
    assert "not a trained run" in capsys.readouterr().err
    assert main(["predict", str(run), str(tmp_path), "--output", str(tmp_path)]) == 2
    assert "--output takes a file name" in capsys.readouterr().err
