"""Each warning code has a file that triggers it (made with pydicom here), and the refusals
say what to do in the caller's terms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from cxr_testutils import chest_like, dicom_film, jpeg_dicom
from cxrguide.data.film_flags import CODES, lossy_ratio
from cxrguide.data.imaging import read_image
from cxrguide.errors import ImageReadError

FILM = chest_like(120, 100)


def _codes(path, **kw) -> list[str]:
    return read_image(path, **kw)[1].warning_codes


def test_plain_radiograph_has_no_warnings(tmp_path):
    assert _codes(dicom_film(tmp_path / "a.dcm", FILM, PatientOrientation=["L", "F"])) == []


@pytest.mark.parametrize(
    ("tags", "code", "text"),
    [
        ({"BurnedInAnnotation": "YES"}, "burned_in_annotation", "text is burned into the pixels"),
        (
            {"PatientOrientation": ["R", "F"]},
            "mirrored",
            "PatientOrientation R\\F puts the patient's left on the left",
        ),
        ({"PatientOrientation": ["L", "H"]}, "mirrored", "head at the bottom"),
        (
            {"LossyImageCompression": "01", "LossyImageCompressionRatio": 623},
            "lossy_compressed",
            "lossy compression, ratio 623:1",
        ),
        ({"ViewPosition": "LL"}, "lateral", "lateral view (LL)"),
    ],
)
def test_each_header_warning(tmp_path, tags, code, text):
    info = read_image(dicom_film(tmp_path / "f.dcm", FILM, **tags))[1]
    assert info.warning_codes == [code]
    assert text in info.warnings[0]


def test_ordinary_lossy_ratio_is_not_flagged(tmp_path):
    path = dicom_film(
        tmp_path / "f.dcm", FILM, LossyImageCompression="01", LossyImageCompressionRatio=8
    )
    assert _codes(path) == []  # what the public JPEG training sets are


def test_secondary_capture_without_modality_or_with_ot_is_read_with_no_modality(tmp_path):
    bare = dicom_film(
        tmp_path / "sc.dcm", FILM, sop_class=SecondaryCaptureImageStorage, modality=None
    )
    ot = dicom_film(
        tmp_path / "ot.dcm", FILM, sop_class=SecondaryCaptureImageStorage, modality="OT"
    )
    assert _codes(bare) == _codes(ot) == ["no_modality"]
    other_ot = dicom_film(tmp_path / "x.dcm", FILM, modality="OT")  # OT outside a capture
    with pytest.raises(ImageReadError, match="modality OT is not a radiograph"):
        read_image(other_ot)


def test_for_processing_refused_unless_allowed(tmp_path):
    path = dicom_film(tmp_path / "raw.dcm", FILM, PresentationIntentType="FOR PROCESSING")
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert err.value.reason == (
        "DICOM is FOR PROCESSING (raw detector data, not an image meant for reading); "
        "pass --allow-for-processing to read it anyway"
    )
    assert err.value.reason_for("rest").endswith("(its operator can set allow_for_processing)")
    assert _codes(path, allow_for_processing=True) == ["for_processing"]


def test_lossy_transfer_syntax_with_measured_ratio(tmp_path):
    path = jpeg_dicom(tmp_path / "j.dcm")
    info = read_image(path)[1]
    assert "lossy_compressed" not in info.warning_codes  # JPEG baseline at ~2:1: ordinary

    ratio, text = lossy_ratio(pydicom.dcmread(path), 1000)
    assert text == f"{ratio:.0f}:1 (measured)" and ratio == 256 * 256 / 1000


def test_every_code_is_documented():
    doc = (Path(__file__).parents[2] / "docs/dicom.md").read_text()
    assert all(f"`{code}`" in doc for code in (*CODES, "truncated"))
    assert np.all([c.islower() for c in CODES])
