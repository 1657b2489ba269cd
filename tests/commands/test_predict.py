"""`cxrguide predict RUN INPUT...`: table / JSON / CSV, folders, DICOM, --cam, bad files -> 2."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr_testutils import jpeg_dicom
from cxrguide.cli import main
from cxrguide.inference.predictor import Predictor
from cxrguide.inference.redact import SALT_ENV, Redactor
from cxrguide.labels import CLASSES
from inference_helpers import PATIENT, film, gated_run, study_film, tiny_run


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
    assert list(rows[0]) == [
        "file",
        "label",
        "p_Normal",
        "p_Pneumonia",
        "p_COVID-19",
        "lung_coverage",
        "lung_quality",
        "reliable",
        "warnings",
        "ood_score",
        "calibrated",
        "run_id",
    ]
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
    code = main(
        [
            "predict",
            str(run),
            str(inputs / "a.png"),
            str(bad),
            str(tiny),
            str(tmp_path / "missing.dcm"),
            "--json",
            "--no-progress",
        ]
    )
    assert code == 2
    captured = capsys.readouterr()
    assert [r["file"] for r in json.loads(captured.out)] == [str(inputs / "a.png")]
    err = captured.err
    assert f"skipped {tmp_path / 'missing.dcm'}: file not found" in err
    assert f"skipped {bad}:" in err and f"skipped {tiny}: too small" in err
    assert "3 input(s) could not be used; 1 labelled" in err


def test_dicom_with_a_cut_jpeg_frame_is_skipped_not_classified(run, inputs, tmp_path, capsys):
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
    code = main(
        [
            "predict",
            str(run),
            str(inputs / "a.png"),
            str(same_stem / "a.png"),
            "--cam",
            str(cams),
            "--json",
            "--no-progress",
            "--backend",
            "fp32",
        ]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in cams.iterdir()) == ["a_2_cam.png", "a_cam.png"]
    assert [Path(r["cam"]).name for r in rows] == ["a_cam.png", "a_2_cam.png"]
    for r in rows:
        assert r["lung_quality"] == "ok" and 0.15 < r["lung_coverage"] < 0.6
        rgb = np.asarray(Image.open(r["cam"]))
        assert rgb.shape == (96, 80, 3)  # the film's own rows and columns (80 x 96), not the square
        assert np.all(rgb == (255, 0, 255), axis=-1).sum() > 20  # the lung contour is drawn


def test_usage_errors(run, tmp_path, capsys):
    assert main(["predict", str(tmp_path), str(tmp_path)]) == 2
    assert "not a trained run" in capsys.readouterr().err
    assert main(["predict", str(run), str(tmp_path), "--output", str(tmp_path)]) == 2
    assert "--output takes a file name" in capsys.readouterr().err


def test_redact_paths_hides_file_names_everywhere(run, tmp_path, capsys, monkeypatch):
    """CSV, JSON, table, CAM file names and skipped-file lines carry file-<hash>, the same for
    the same name under one salt, so results can still be matched back."""

    monkeypatch.delenv(SALT_ENV, raising=False)
    patient = tmp_path / "Doe_John" / "MRN12345_chest.png"
    patient.parent.mkdir()
    film(patient, seed=4)
    bad = tmp_path / "Doe_John" / "MRN12345_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out, cams = tmp_path / "out.csv", tmp_path / "cams"
    common = [
        "predict",
        str(run),
        str(patient),
        str(bad),
        "--redact-paths",
        "--no-progress",
        "--backend",
        "fp32",
    ]
    assert main([*common, "--redact-salt", "pepper", "--csv", str(out), "--cam", str(cams)]) == 2
    err = capsys.readouterr().err
    hashed = Redactor("pepper")
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["file"] for r in rows] == [hashed(str(patient))]
    assert [p.name for p in cams.iterdir()] == [f"{hashed(str(patient))}_cam.png"]
    assert f"skipped {hashed(str(bad))}:" in err
    for text in (out.read_text(), err):
        assert "Doe" not in text and "MRN" not in text
    monkeypatch.setenv(SALT_ENV, "pepper")
    assert main([*common, "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["file"] == hashed(str(patient))
    monkeypatch.delenv(SALT_ENV)
    assert main([*common, "--format", "table"]) == 2
    captured = capsys.readouterr()
    assert "Doe" not in captured.out + captured.err and "MRN" not in captured.out + captured.err
    assert hashed(str(patient)) not in captured.out  # no salt: a random one for this run
    assert "file-" in captured.out


def test_dicom_out_and_uids_in_csv_and_json(run, inputs, tmp_path, capsys):
    """--dicom-out: an SR + SC per DICOM input; the rows carry the source UIDs, never the
    patient's name or ID; a DICOM without UIDs is labelled but named on stderr (exit 2)."""

    a = study_film(tmp_path / "a.dcm", seed=4)
    b = study_film(tmp_path / "b.dcm", width=120, height=90, seed=5)
    out = tmp_path / "dicom"
    args = [
        "predict",
        str(run),
        str(a),
        str(b),
        str(inputs / "a.png"),
        "--no-progress",
        "--backend",
        "fp32",
        "--dicom-out",
        str(out),
    ]
    assert main([*args, "--csv"]) == 0
    text = capsys.readouterr().out
    assert PATIENT["PatientID"] not in text and "Doe" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0])[-6:] == [
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "AccessionNumber",
        "dicom_sr",
        "dicom_sc",
    ]
    for row, path in zip(rows[:2], (a, b), strict=True):
        source = pydicom.dcmread(path, stop_before_pixels=True)
        assert row["SOPInstanceUID"] == source.SOPInstanceUID
        assert row["AccessionNumber"] == source.AccessionNumber
        sr, sc = pydicom.dcmread(row["dicom_sr"]), pydicom.dcmread(row["dicom_sc"])
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
        assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    assert rows[2]["SOPInstanceUID"] == rows[2]["dicom_sr"] == ""  # the PNG: nothing
    assert len(list(out.iterdir())) == 4
    assert main([*args[:3], str(inputs / "nested" / "deeper" / "c.dcm"), "--json", *args[5:]]) == 2
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    assert got[0]["StudyInstanceUID"] and got[0]["dicom_sc"].endswith(".dcm")
    assert "dicom_sr" not in got[1] and "Doe" not in captured.out
    assert "no DICOM result for " in captured.err and "has no StudyInstanceUID" in captured.err
