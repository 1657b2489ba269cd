"""DICOM out: the SR and the Grad-CAM Secondary Capture round-trip through pydicom and dcmtk."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxrguide.errors import CxrGuideError
from cxrguide.inference.dicom_out import CLASS_CODES, DISCLAIMER, DicomWriter
from cxrguide.inference.predictor import Predictor
from cxrguide.labels import CLASSES
from inference_helpers import PATIENT, film, gated_run, study_film, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor(tiny_run(tmp_path_factory), backend="fp32")


@pytest.fixture(scope="module")
def written(predictor, tmp_path_factory):
    """One DICOM film (80 wide, 96 high) classified and its SR + SC written."""
    root = tmp_path_factory.mktemp("dicom-out")
    source = study_film(root / "in.dcm", width=80, height=96, seed=3)
    prediction = predictor.predict_file(source)
    out = root / "out"
    out.mkdir()
    return source, prediction, DicomWriter(predictor, out).write(prediction)


def _items(node):
    for item in node.get("ContentSequence", []):
        yield item
        yield from _items(item)


def test_sr_references_the_film_and_holds_the_probabilities(written, predictor):
    source_path, prediction, result = written
    source, sr = pydicom.dcmread(source_path), pydicom.dcmread(result.sr_path)
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert sr.SOPInstanceUID == result.sr_uid and result.sr_path.name == f"SR_{result.sr_uid}.dcm"
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert (
        sr.SeriesInstanceUID != source.SeriesInstanceUID
        and "NOT FOR DIAGNOSTIC" in sr.SeriesDescription
    )
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    items = list(_items(sr))
    probs = {
        i.ConceptNameCodeSequence[0].CodeMeaning.removeprefix("Probability of "): float(
            i.MeasuredValueSequence[0].NumericValue
        )
        for i in items
        if i.ValueType == "NUM"
    }
    assert list(probs) == list(CLASSES)
    assert probs == pytest.approx(prediction.probabilities, abs=1e-9)
    coded = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0]
        for i in items
        if i.ValueType == "CODE"
    }
    assert coded["Predicted class"].CodeValue == CLASS_CODES[prediction.label][0]
    images = [i for i in items if i.ValueType == "IMAGE"]
    assert images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert DISCLAIMER in texts and f"run_id={predictor.run_id}" in texts
    assert f"backbone={predictor.info.backbone}" in texts
    assert any(t.startswith("weights=") for t in texts)
    equipment = sr.ContributingEquipmentSequence[0]
    assert equipment.Manufacturer == "cxrguide" and equipment.DeviceSerialNumber == predictor.run_id


def test_sc_is_the_overlay_in_the_film_geometry_in_the_same_study(written):
    source_path, _, result = written
    source, sc = pydicom.dcmread(source_path), pydicom.dcmread(result.sc_path)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SOPInstanceUID == result.sc_uid
    assert (sc.Rows, sc.Columns, sc.SamplesPerPixel) == (96, 80, 3)
    assert sc.PhotometricInterpretation == "RGB" and sc.PatientOrientation == ["L", "F"]
    rgb = sc.pixel_array.astype(int)
    assert rgb.shape == (96, 80, 3) and np.abs(rgb[..., 0] - rgb[..., 2]).max() > 30  # heat


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk's dsrdump not installed")
def test_dcmtk_reads_the_sr_and_the_sc(written):
    _, prediction, result = written
    out = subprocess.run(
        ["dsrdump", str(result.sr_path)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and "E:" not in out.stderr, out.stderr
    assert "Verification Flag   : UNVERIFIED" in out.stdout
    assert f'NUM:(,,"Probability of {prediction.label}")' in out.stdout
    dump = subprocess.run(
        ["dcmdump", str(result.sc_path)], capture_output=True, text=True, timeout=30
    )
    assert dump.returncode == 0 and "SecondaryCaptureImageStorage" in dump.stdout


def test_results_carry_the_uids_and_never_the_patient(written, predictor):
    source_path, prediction, _ = written
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    row = prediction.record(predictor.run_id)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber"):
        assert row[key] == str(source[key].value)
    assert not any(secret in str(row) for secret in ("Doe", PATIENT["PatientID"], "1970"))


def test_inputs_that_cannot_be_referenced(predictor, tmp_path):
    writer = DicomWriter(predictor, tmp_path)
    png = predictor.predict_file(film(tmp_path / "a.png"))
    assert writer.write(png) is None and png.uids == {}
    bare = predictor.predict_file(film(tmp_path / "bare.dcm"))  # DX without any UIDs
    with pytest.raises(
        CxrGuideError, match="has no StudyInstanceUID, SeriesInstanceUID, so no result"
    ):
        writer.write(bare)
    odd = pydicom.dcmread(study_film(tmp_path / "odd.dcm"))
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        odd.StudyDate = "notadate"  # a malformed header value: one line, nothing written
    odd.save_as(tmp_path / "odd.dcm")
    with pytest.raises(CxrGuideError, match="cannot build a DICOM result"):
        writer.write(predictor.predict_file(tmp_path / "odd.dcm"))
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["a.png", "bare.dcm", "odd.dcm"]


def test_a_lung_model_adds_a_seg_of_the_lungs_in_the_film_geometry(tmp_path_factory, tmp_path):
    predictor = Predictor(gated_run(tmp_path_factory), backend="fp32")
    source = study_film(tmp_path / "in.dcm", width=90, height=120, seed=6)
    prediction = predictor.predict_file(source)
    result = DicomWriter(predictor, tmp_path).write(prediction)
    seg = pydicom.dcmread(result.seg_path)
    assert (
        seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.SOPInstanceUID == result.seg_uid
    )
    assert seg.StudyInstanceUID == pydicom.dcmread(source).StudyInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel == "Lungs"
    lungs = seg.pixel_array.astype(bool)
    assert lungs.shape == (120, 90) and 0.15 < lungs.mean() < 0.6
    assert not lungs[:, :10].any() and not lungs[:, -10:].any()  # not in the body's margins
    sc = pydicom.dcmread(result.sc_path).pixel_array
    assert np.all(sc == (255, 0, 255), axis=-1).sum() > 20  # the contour drawn on the SC
