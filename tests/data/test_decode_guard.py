"""Forged end markers, bounded decoding and the radiograph gate (cxrguide.data.decode_guard)."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate

from cxr_testutils import jpeg_dicom, png_bomb
from cxrguide.data import decode_guard as guard
from cxrguide.data import film_flags, intensity
from cxrguide.data.imaging import probe, read_image
from cxrguide.errors import ImageReadError


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w)) * 255).astype(np.uint8)


def _forged_jpeg(path, data: np.ndarray, width: int, height: int) -> None:
    """A real JPEG of ``data`` whose frame header claims ``width x height`` (EOI kept)."""
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, "JPEG", quality=90)
    raw = bytearray(buf.getvalue())
    sof = raw.find(b"\xff\xc0")
    struct.pack_into(">HH", raw, sof + 5, height, width)
    path.write_bytes(bytes(raw))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, rows: np.ndarray) -> bytes:
    """An 8-bit gray PNG whose (complete, valid) zlib stream holds only ``rows``."""
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def _reason(path, **kw) -> str:
    with pytest.raises(ImageReadError) as err:
        read_image(path, **kw)
    return err.value.reason


def test_jpeg_header_bigger_than_its_data_refused_before_decoding(tmp_path):
    path = tmp_path / "forged.jpg"
    _forged_jpeg(path, _noise(128, 128), 6000, 6000)
    reason = _reason(path)
    assert reason.startswith("truncated image data (header says 6000x6000, which needs at least")
    with pytest.raises(ImageReadError):  # header-only look refuses it too
        probe(path)


@pytest.mark.parametrize("target", [None, 256])
def test_jpeg_filler_behind_a_forged_end_marker_refused(tmp_path, target):
    path = tmp_path / "forged.jpg"
    _forged_jpeg(path, _noise(128, 128), 600, 600)  # big enough to pass the byte floor
    assert "decoder's filler" in _reason(path, target=target)


def test_real_jpeg_with_mid_gray_content_is_kept(tmp_path):
    arr = _noise(200, 200)
    arr[150:] = 128  # a flat band at the bottom, but real data up to the last pixel
    arr[-1, -1] = 127
    Image.fromarray(arr).save(tmp_path / "ok.jpg", quality=100)
    img, _ = read_image(tmp_path / "ok.jpg")
    assert img.shape == (200, 200)


def test_png_whose_zlib_stream_ends_early_refused(tmp_path):
    rows = _noise(128, 64)
    (tmp_path / "short.png").write_bytes(_png(64, 6000, rows))
    reason = _reason(tmp_path / "short.png")
    assert reason.startswith("truncated image data (header says 64x6000; the data ends after 2.1")
    (tmp_path / "full.png").write_bytes(_png(64, 128, rows))
    img, _ = read_image(tmp_path / "full.png")
    np.testing.assert_allclose(img, rows / 255, atol=1e-6)


def test_png_bomb_refused_in_a_fraction_of_a_second(tmp_path):
    """2 MB of zeros behind the rows a 256x256 header needs: 4.6 s of CPU, then 200, before."""

    path = png_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size > 2_000_000
    start = time.process_time()
    reason = _reason(path)
    assert time.process_time() - start < 0.5
    assert reason.startswith("PNG holds more image data than its 256x256 header needs")


def test_decode_deadline_refuses_and_says_what_to_change(tmp_path):
    path = tmp_path / "ok.png"
    Image.fromarray(_noise(300, 300)).save(path)
    with pytest.raises(ImageReadError) as err:
        read_image(path, deadline_s=1e-9)
    assert err.value.cause == "decoding took longer than 1e-09 s (the decode deadline)"
    assert err.value.reason.endswith(
        "; pass --decode-timeout-s SECONDS with more seconds to allow it"
    )
    assert "--decode" not in err.value.reason_for("rest")
    read_image(path, deadline_s=30)  # the same file within its budget
    deadline = guard.Deadline(None)
    deadline.check()  # no limit: never raises


def test_interlaced_png_size_rule(tmp_path):
    arr = _noise(77, 91)
    Image.fromarray(arr).save(tmp_path / "i.png", interlace=1)
    assert guard.png_data_refusal(tmp_path / "i.png") is None
    img, _ = read_image(tmp_path / "i.png")
    np.testing.assert_allclose(img, arr / 255, atol=1e-6)


def test_block_mean_matches_pillow_reduce():
    arr = np.random.default_rng(1).random((101, 67)).astype(np.float32)
    ours = intensity.block_mean(arr, 4)
    theirs = np.asarray(Image.fromarray(arr).reduce(4))
    assert ours.shape == theirs.shape == (26, 17)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_palette_png_decoded_small_when_a_target_is_given(tmp_path):
    """The bomb-like case: a tiny palette PNG of a large film decodes to the needed size."""
    im = Image.new("P", (2100, 1400))
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.paste(200, (0, 0, 1050, 1400))
    im.save(tmp_path / "pal.png", optimize=True)
    full, info = read_image(tmp_path / "pal.png")
    small, info_small = read_image(tmp_path / "pal.png", target=256)
    assert info == info_small and (info.width, info.height) == (2100, 1400)
    assert small.shape == (175, 263) and small.dtype == np.float32  # factor 8, longer side >= 256
    np.testing.assert_allclose(small[:, :131], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(small[:, 132:], 0, atol=1e-6)
    assert full.shape == (1400, 2100)


def test_jpeg_decoded_at_draft_scale(tmp_path):
    arr = np.tile(np.linspace(0, 255, 1600, dtype=np.float32), (1200, 1)).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=95)
    img, info = read_image(tmp_path / "big.jpg", target=200)
    assert (info.width, info.height) == (1600, 1200)
    assert max(img.shape) >= 200 and max(img.shape) < 400
    ref = arr[:: 1200 // img.shape[0], :: 1600 // img.shape[1]] / 255
    assert np.abs(img.mean() - ref.mean()) < 0.01


def test_modality_gate_and_film_warnings():
    accepted = film_flags.normalise_modalities(None)
    assert film_flags.modality_refusal("CR", accepted) is None
    assert film_flags.modality_refusal("", accepted) is None  # states nothing: read
    refusal = film_flags.modality_refusal("mr", accepted)
    assert str(refusal) == (
        "DICOM modality MR is not a radiograph (CR/DX/DR/RG); pass --allow-modality MR to read it "
        "anyway"
    )
    assert refusal.remedy.phrase("rest") == (
        "this server is not set up to read it (its operator can set allow_modality=MR)"
    )
    assert film_flags.modality_refusal("RG", accepted) is None
    assert film_flags.modality_refusal("OT", accepted) is not None  # OT outside a screen capture
    assert film_flags.modality_refusal("OT", accepted, film_flags.SECONDARY_CAPTURE) is None
    assert film_flags.modality_refusal("MR", film_flags.normalise_modalities(["mr"])) is None
    assert film_flags.modality_refusal("PT", film_flags.normalise_modalities(["all"])) is None
    assert film_flags.film_warnings("DX", "PA") == []
    assert film_flags.film_warnings("DX", "LL") == [
        "lateral: lateral view (LL); the model was trained on frontal films"
    ]
    assert film_flags.film_warnings("CT", "")[0].startswith("non_radiograph: modality CT is not")


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_dicom_jpeg_frame_behind_a_forged_end_marker_refused(tmp_path, keep):
    """The DICOM decoders fill a cut JPEG frame (mid-gray or repeated rows); we refuse it."""

    path = jpeg_dicom(tmp_path / "cut.dcm", keep=keep)
    assert pydicom.dcmread(path).pixel_array.shape == (256, 256)  # what pydicom alone does
    reason = _reason(path, target=128)
    assert reason.startswith("DICOM JPEG frame: truncated image data (the last")
    assert "decoder's filler" in reason


def test_intact_dicom_jpeg_frame_read(tmp_path):
    path = jpeg_dicom(tmp_path / "ok.dcm")
    img, info = read_image(path)
    assert (info.format, info.width, info.modality) == ("DICOM", 256, "CR")
    expected = pydicom.dcmread(path).pixel_array.astype(np.float32) / 255  # 8-bit: like a PNG
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_dicom_jpeg_frame_smaller_than_its_header_refused(tmp_path):
    path = jpeg_dicom(tmp_path / "big.dcm", side=64)
    ds = pydicom.dcmread(path)
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, "JPEG", quality=90)
    raw = bytearray(buf.getvalue())
    struct.pack_into(">HH", raw, raw.find(b"\xff\xc0") + 5, 6000, 6000)  # a forged frame header
    ds.PixelData = encapsulate([bytes(raw)])
    ds.Rows = ds.Columns = 6000  # the DICOM header agrees with the frame's: the byte floor fires
    ds.save_as(path)
    assert _reason(path) == (
        "DICOM JPEG frame: truncated image data (header says 6000x6000, which needs at least "
        f"70,312 bytes; the frame has {len(raw) + len(raw) % 2:,})"  # 750 * 750 blocks / 8; even
    )
