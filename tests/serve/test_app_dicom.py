"""REST under `serve --dicom-out`: a DICOM upload's answer names its study (UIDs, never the
patient), and its SR + Grad-CAM Secondary Capture are written into the folder."""

from __future__ import annotations

import pydicom
from fastapi.testclient import TestClient

from cxrguide.serve.app import create_app
from inference_helpers import PATIENT, film, study_film


def test_dicom_upload_gets_uids_and_writes_sr_and_sc(predictor, tmp_path):
    out = tmp_path / "dicom"
    out.mkdir()
    source = study_film(tmp_path / "scan.dcm", seed=11)
    ds = pydicom.dcmread(source)
    with TestClient(create_app(predictor, dicom_out=out), base_url="http://localhost") as client:
        r = client.post(
            "/v1/predict", files={"file": ("scan.dcm", source.read_bytes(), "application/dicom")}
        )
        png = client.post(
            "/v1/predict",
            files={"file": ("a.png", film(tmp_path / "a.png").read_bytes(), "image/png")},
        )
        bare = client.post(
            "/v1/predict",
            files={"file": ("b.dcm", film(tmp_path / "b.dcm").read_bytes(), "application/dicom")},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dicom_source"] == {
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SOPInstanceUID": ds.SOPInstanceUID,
        "AccessionNumber": ds.AccessionNumber,
    }
    assert "Doe" not in r.text and PATIENT["PatientID"] not in r.text
    written = body["dicom_written"]
    sr = pydicom.dcmread(out / f"SR_{written['sr_sop_instance_uid']}.dcm")
    sc = pydicom.dcmread(out / f"SC_{written['sc_sop_instance_uid']}.dcm")
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == ds.StudyInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED" and (sc.Rows, sc.Columns) == (ds.Rows, ds.Columns)
    assert png.status_code == 200 and png.json()["dicom_source"] is None
    assert png.json()["dicom_written"] is None
    assert (
        bare.status_code == 200
        and "has no StudyInstanceUID" in bare.json()["dicom_written"]["not_written"]
    )
    assert len(list(out.iterdir())) == 2
