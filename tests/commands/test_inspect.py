"""`cxrguide inspect`: one line per file, bad files reported without stopping, exit code 0/2."""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from cxr_testutils import chest_like, dicom_film, jpeg_dicom
from cxrguide.cli import main
from cxrguide.data.imaging import model_input


def _png(path, h=96, w=80):
    Image.fromarray(np.full((h, w), 128, np.uint8)).save(path)
    return str(path)


def _dicom(path):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.ViewPosition = "PA"
    ds.set_pixel_data(
        np.arange(100 * 120, dtype=np.uint16).reshape(100, 120) % 4096, "MONOCHROME1", 12
    )
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_all_good_files_exit_0(tmp_path, capsys):
    png, dcm = _png(tmp_path / "a.png"), _dicom(tmp_path / "b.dcm")
    assert main(["inspect", png, dcm]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{png}: PNG 80x96 8-bit L OK",
        f"{dcm}: DICOM 120x100 12-bit MONOCHROME1 view PA OK",
    ]


def test_bad_files_reported_and_processing_continues(tmp_path, capsys):
    good = _png(tmp_path / "good.png")
    small = _png(tmp_path / "small.png", 40, 40)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    missing = str(tmp_path / "missing.dcm")
    assert main(["inspect", missing, str(text), small, good]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{missing}: file not found",
        f"{text}: not an image file",
        f"{small}: too small (40x40 px, need >= 64)",
        f"{good}: PNG 80x96 8-bit L OK",
    ]


def test_reader_flags_change_the_verdict(tmp_path, capsys):
    small = _png(tmp_path / "small.png", 40, 40)
    assert main(["inspect", "--min-side", "32", small]) == 0
    assert capsys.readouterr().out == f"{small}: PNG 40x40 8-bit L OK\n"
    big = _png(tmp_path / "big.png", 100, 100)
    assert main(["inspect", "--max-pixels", "9999", big]) == 2
    assert capsys.readouterr().out == f"{big}: too many pixels (100x100 = 10,000 > limit 9,999)\n"
    cfg = tmp_path / "reader.yaml"
    cfg.write_text("min_side: 200\n")
    assert main(["inspect", "--config", str(cfg), big]) == 2
    assert "too small (100x100 px, need >= 200)" in capsys.readouterr().out


def test_real_samples(shared_data, capsys):
    rsna = sorted(shared_data.glob("RSNAPDD/*/stage_2_train_images/*.dcm"))[0]
    rgba = shared_data / "CCXRD/covid-chestxray-dataset/images/000001-12.jpg"
    assert main(["inspect", str(rsna), str(rgba)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{rsna}: DICOM 1024x1024 8-bit MONOCHROME2 CR view AP OK",
        f"{rgba}: PNG 373x361 8-bit RGBA OK",
    ]


def test_non_radiograph_refused_unless_allowed_and_lateral_warned(tmp_path, capsys):
    ct = get_testdata_file("CT_small.dcm")
    assert main(["inspect", ct]) == 2
    assert capsys.readouterr().out == (
        f"{ct}: DICOM modality CT is not a radiograph (CR/DX/DR/RG); "
        "pass --allow-modality CT to read it anyway\n"
    )
    assert main(["inspect", ct, "--allow-modality", "CT"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"{ct}: DICOM 128x128 16-bit MONOCHROME2 CT OK; warning: non_radiograph: modality CT"
    )
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.Modality, ds.ViewPosition = "CR", "LL"
    ds.set_pixel_data(
        np.arange(100 * 120, dtype=np.uint16).reshape(100, 120) % 4096, "MONOCHROME2", 12
    )
    ds.save_as(tmp_path / "lat.dcm", enforce_file_format=True)
    assert main(["inspect", str(tmp_path / "lat.dcm")]) == 0
    assert capsys.readouterr().out.endswith(
        "CR view LL OK; warning: lateral: lateral view (LL); the "
        "model was trained on frontal films\n"
    )


def test_dicom_with_a_cut_jpeg_frame_and_a_forged_end_marker_refused(tmp_path, capsys):
    cut, ok = jpeg_dicom(tmp_path / "cut.dcm", keep=0.5), jpeg_dicom(tmp_path / "ok.dcm")
    assert main(["inspect", str(cut), str(ok)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1] == f"{ok}: DICOM 256x256 8-bit MONOCHROME2 CR view PA OK"
    assert out[0].startswith(f"{cut}: DICOM JPEG frame: truncated image data (the last 5")


def test_model_input_saved_is_what_predict_sees_and_png_matches_dicom(tmp_path, capsys):
    arr = chest_like(300, 260)
    png = tmp_path / "f.png"
    Image.fromarray(arr).save(png)
    m1 = dicom_film(tmp_path / "f.dcm", (255 - arr).astype(np.uint8), "MONOCHROME1")
    saved = {}
    for name, path in (("png", png), ("dcm", m1)):
        out = tmp_path / f"{name}_in.png"
        assert main(["inspect", str(path), "--model-input", "224", "--save", str(out)]) == 0
        line = capsys.readouterr().out
        assert "model input 224x224 mean 0." in line and "(intensity: 8-bit /255)" in line
        saved[name] = np.asarray(Image.open(out)).astype(np.float32) / 255
        np.testing.assert_array_equal(saved[name], model_input(path, 224)[0])  # exactly
    assert np.abs(saved["png"] - saved["dcm"]).max() <= 1 / 255 + 1e-6
    # --save needs one file, a .png name, and never the input itself
    assert (
        main(
            ["inspect", str(png), str(m1), "--model-input", "64", "--save", str(tmp_path / "x.png")]
        )
        == 2
    )
    assert main(["inspect", str(png), "--model-input", "64", "--save", str(png)]) == 2
    assert "expected a new .png file name" in capsys.readouterr().err
