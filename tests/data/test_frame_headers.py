"""Compressed DICOM frames are checked against their own headers before any codec runs."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    JPEG2000Lossless,
    generate_uid,
)

from cxr_testutils import chest_like, dicom_film
from cxrguide.data.frame_headers import frame_header
from cxrguide.data.imaging import read_image
from cxrguide.errors import ImageReadError

openjpeg = pytest.importorskip("openjpeg")


def j2k_dicom(path: Path, stream: bytes, rows: int = 256, cols: int = 256, **tags) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tags.pop("syntax", JPEG2000Lossless)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality, ds.Rows, ds.Columns = "DX", rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _j2k(side: int, codec_format: int = 0) -> bytes:
    arr = np.zeros((side, side), np.uint16)
    arr[0, 0] = 4095  # a trivial image: compresses to ~1 KB at any size
    return openjpeg.encode(
        arr, bits_stored=12, compression_ratios=[1000], codec_format=codec_format
    )


@pytest.mark.slow  # a subprocess (fresh memory figures) and a 6000x6000 encode: ~5 s
def test_huge_j2k_codestream_behind_a_small_header_refused_with_little_memory(tmp_path):
    """6000x6000 inside a 256x256 header: ~210 MB of growth before the check, < 100 MB now."""
    path = j2k_dicom(tmp_path / "bomb.dcm", _j2k(6000))
    assert path.stat().st_size < 4000
    script = textwrap.dedent(f"""
        import resource
        import pydicom, openjpeg  # imports are not the decode's memory
        from cxrguide.data.imaging import read_image
        from cxrguide.errors import ImageReadError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_image({str(path)!r})
            print("decoded")
        except ImageReadError as err:
            print(err.reason)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()
    assert out[0] == (
        "the JPEG 2000 frame is 6000x6000 but the DICOM header says 256x256 (refused before "
        "decoding)"
    )
    assert float(out[1]) < 100  # MB


def test_j2k_frame_with_more_components_or_bits_refused(tmp_path):
    rgb = openjpeg.encode(np.zeros((64, 64, 3), np.uint8), photometric_interpretation=1)
    path = j2k_dicom(tmp_path / "rgb.dcm", rgb, 64, 64)
    with pytest.raises(
        ImageReadError, match=r"frame has 3 component\(s\) of \d+ bits but the DICOM header says 1"
    ):
        read_image(path)


def test_matching_j2k_frame_decodes_and_a_cut_one_is_truncated(tmp_path):
    arr = (np.arange(128 * 96).reshape(128, 96) % 4096).astype(np.uint16)
    stream = openjpeg.encode(arr, bits_stored=12)
    gray, info = read_image(j2k_dicom(tmp_path / "ok.dcm", stream, 128, 96))
    np.testing.assert_allclose(gray, arr / 4095, atol=1e-6)
    with pytest.raises(ImageReadError) as err:
        read_image(j2k_dicom(tmp_path / "cut.dcm", stream[: len(stream) // 2], 128, 96))
    assert (
        err.value.reason == "truncated image data (the JPEG 2000 frame stops before its end marker)"
    )


def test_file_cut_inside_its_pixel_data_is_truncated_not_missing(tmp_path):
    arr = (np.arange(128 * 96).reshape(128, 96) % 4096).astype(np.uint16)
    path = j2k_dicom(tmp_path / "f.dcm", openjpeg.encode(arr, bits_stored=12), 128, 96)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(ImageReadError, match=r"^.*: truncated image data"):
        read_image(path)


def test_frame_header_reads_jpeg_jpeg_ls_and_jp2():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(buf, "JPEG")
    head = frame_header(buf.getvalue())
    assert (head.width, head.height, head.components, head.precision) == (90, 70, 1, 8)
    jp2 = _j2k(300, codec_format=1)
    assert jp2[4:8] == b"jP  "
    head = frame_header(jp2)
    assert (head.width, head.height, head.components, head.precision, head.codec) == (
        300,
        300,
        1,
        12,
        "JPEG 2000",
    )
    jpeg_ls = pytest.importorskip("jpeg_ls")
    stream = bytes(jpeg_ls.encode(np.zeros((40, 50), np.uint16) + 3))
    head = frame_header(stream)
    assert (head.width, head.height, head.codec) == (50, 40, "JPEG-LS")
    with pytest.raises(ValueError, match="neither JPEG nor JPEG 2000"):
        frame_header(b"\x00" * 64)


def test_deflated_dicom_that_inflates_too_far_refused(tmp_path):
    """pydicom inflates a Deflated Explicit VR dataset whole: bounded by the pixel limit."""

    small = dicom_film(tmp_path / "ok.dcm", chest_like(100, 90))
    ds = pydicom.dcmread(small)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm")
    assert read_image(tmp_path / "deflated.dcm", max_pixels=100 * 100)[1].width == 90
    ds.add_new(0x00091010, "OB", b"\0" * (40 << 20))  # 40 MB of zeros in a private element
    ds.save_as(tmp_path / "bomb.dcm")
    assert (tmp_path / "bomb.dcm").stat().st_size < 200_000
    with pytest.raises(ImageReadError, match="deflated DICOM dataset inflates past"):
        read_image(tmp_path / "bomb.dcm", max_pixels=100 * 100)
