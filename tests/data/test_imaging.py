"""The one image reader: accepted formats, normalisation, refusals, and the letterbox resize."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset

from cxrguide.data.imaging import (
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    ImageInfo,
    fit_square,
    probe,
    read_image,
    to_uint8,
)
from cxrguide.errors import CxrGuideError, ImageReadError

RNG = np.random.default_rng(0)


def _gray8(h: int = 96, w: int = 80) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w), dtype=np.uint8)


def _reason(path: Path, **kw) -> str:
    with pytest.raises(ImageReadError) as exc:
        read_image(path, **kw)
    assert isinstance(exc.value, CxrGuideError) and exc.value.path == str(path)
    return exc.value.reason


def _dicom(path: Path, arr: np.ndarray, photometric: str, bits: int, **tags) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _big_bilevel_png(path: Path, w: int, h: int) -> Path:
    """A valid 1-bit all-black PNG of any size, written without ever holding its pixels."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (w + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
    path.write_bytes(data + _png_chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------ PNG / JPEG / colour


def test_png_8bit_divided_by_255_and_header_info(tmp_path):
    arr = _gray8()
    Image.fromarray(arr).save(tmp_path / "a.png")
    img, info = read_image(tmp_path / "a.png")
    assert img.dtype == np.float32 and img.shape == (96, 80)
    np.testing.assert_allclose(img, arr / 255.0, atol=1e-7)
    assert info == ImageInfo(str(tmp_path / "a.png"), "PNG", 80, 96, 8, "L", "")
    assert info.describe() == "PNG 80x96 8-bit L"
    assert probe(tmp_path / "a.png") == info


def test_png_16bit_full_range_divided_by_65535(tmp_path):
    arr = np.linspace(0, 65535, 96 * 80).reshape(96, 80).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "a16.png")
    img, info = read_image(tmp_path / "a16.png")
    np.testing.assert_allclose(img, arr / 65535.0, atol=1e-6)
    assert info.bit_depth == 16 and info.photometric == "I;16"


def test_png_16bit_goes_by_its_range_like_a_dicom(tmp_path):
    # raw 12-bit detector values in a 16-bit PNG: the range of the pixels, not 2**16 - 1
    arr = np.linspace(100, 4095, 96 * 80).reshape(96, 80).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "a12.png")
    assert probe(tmp_path / "a12.png").bit_depth == 16  # header: a 16-bit container
    img, info = read_image(tmp_path / "a12.png")
    np.testing.assert_allclose(img, (arr - 100) / 3995.0, atol=1e-6)
    assert img.max() == 1.0 and info.bit_depth == 16 and info.intensity == "range"


def test_jpeg_detected_by_content_not_extension(tmp_path):
    arr = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (96, 1))
    Image.fromarray(arr).save(tmp_path / "scan.png", format="JPEG", quality=95)
    img, info = read_image(tmp_path / "scan.png")
    assert (info.format, info.width, info.height, info.bit_depth) == ("JPEG", 80, 96, 8)
    assert np.abs(img - arr / 255.0).max() < 0.05  # lossy, but the same picture


def test_rgb_to_luminance(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = (255, 0, 0)
    rgb[:, 32:] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    img, info = read_image(tmp_path / "rgb.png")
    assert info.photometric == "RGB"
    # Pillow's 8-bit "L" (ITU-R 601, rounded): decoded straight to one byte per pixel
    np.testing.assert_allclose(img[:, :32], round(0.299 * 255) / 255, atol=1e-6)
    np.testing.assert_allclose(img[:, 32:], round(0.114 * 255) / 255, atol=1e-6)


def test_rgba_alpha_composited_on_black(tmp_path):
    rgba = np.full((64, 64, 4), 200, np.uint8)
    rgba[..., 3] = 255
    rgba[:, 32:, 3] = 0  # fully transparent half -> black (air)
    rgba[:16, :32, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    img, info = read_image(tmp_path / "rgba.png")
    assert info.photometric == "RGBA"
    np.testing.assert_allclose(img[16:, :32], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(img[:16, :32], 200 / 255 * 128 / 255, atol=1e-6)
    assert img[:, 32:].max() == 0.0


def test_other_pillow_format_tiff(tmp_path):
    arr = _gray8()
    Image.fromarray(arr).save(tmp_path / "a.tif")
    img, info = read_image(tmp_path / "a.tif")
    assert info.format == "TIFF"
    np.testing.assert_allclose(img, arr / 255.0, atol=1e-7)


# ------------------------------------------------------------------ DICOM


def test_dicom_monochrome2_12bit_minmax_and_view(tmp_path):
    arr = (np.arange(96 * 80).reshape(96, 80) % 4096).astype(np.uint16)
    path = _dicom(tmp_path / "m2.dcm", arr, "MONOCHROME2", 12, ViewPosition="PA")
    img, info = read_image(path)
    assert info == ImageInfo(str(path), "DICOM", 80, 96, 12, "MONOCHROME2", "PA", "DX")
    assert info.describe() == "DICOM 80x96 12-bit MONOCHROME2 DX view PA"
    np.testing.assert_allclose(img, (arr - arr.min()) / (arr.max() - arr.min()), atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    arr = np.linspace(100, 3000, 96 * 80).reshape(96, 80).astype(np.uint16)
    img, info = read_image(_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1", 12))
    assert info.photometric == "MONOCHROME1" and info.view == ""
    np.testing.assert_allclose(img, 1.0 - (arr - 100.0) / 2900.0, atol=1e-6)
    assert img[0, 0] == 1.0 and img[-1, -1] == 0.0  # low stored value = dense = white


def test_dicom_16bit_stored(tmp_path):
    arr = np.linspace(0, 65535, 96 * 80).reshape(96, 80).astype(np.uint16)
    img, info = read_image(_dicom(tmp_path / "b16.dcm", arr, "MONOCHROME2", 16))
    assert info.bit_depth == 16
    np.testing.assert_allclose(img, arr / 65535.0, atol=1e-6)


def test_dicom_high_bits_above_bits_stored_are_ignored(tmp_path):
    arr = (np.arange(96 * 80).reshape(96, 80) % 4096).astype(np.uint16)
    path = _dicom(tmp_path / "ovl.dcm", arr, "MONOCHROME2", 12)
    ds = pydicom.dcmread(path)
    ds.PixelData = (arr | 0xF000).tobytes()  # overlay junk in bits 12-15
    ds.save_as(path)
    img, _ = read_image(path)
    np.testing.assert_allclose(img, arr / 4095.0, atol=1e-6)


def test_dicom_rescale_applied_before_window(tmp_path):
    # stored 0..1000 -> slope 2, intercept -1000 -> -1000..1000; window [-500, 500] in those units
    arr = np.linspace(0, 1000, 96 * 80).reshape(96, 80).round().astype(np.uint16)
    path = _dicom(
        tmp_path / "ct.dcm",
        arr,
        "MONOCHROME2",
        12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=0,
        WindowWidth=1000,
    )
    img, _ = read_image(path)
    hu = arr * 2.0 - 1000.0
    expected = np.clip((hu + 0.5) / 999.0 + 0.5, 0.0, 1.0)  # DICOM linear window, then min-max
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert (img[hu <= -500] == 0).all() and (img[hu > 500] == 1).all()
    # without the rescale the window would have made almost everything white
    assert 0.4 < img.mean() < 0.6


def test_dicom_without_preamble_read_with_force(tmp_path):
    arr = (np.arange(96 * 80).reshape(96, 80) % 4096).astype(np.uint16)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.ViewPosition = "AP"
    ds.set_pixel_data(arr, "MONOCHROME2", 12)
    del ds.file_meta
    path = tmp_path / "bare.bin"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    img, info = read_image(path)
    assert (info.format, info.view) == ("DICOM", "AP")
    np.testing.assert_allclose(img, arr / 4095.0, atol=1e-6)


def test_dicom_without_pixel_data_refused(tmp_path):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # an SR document
    ds.Modality = "SR"
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert _reason(tmp_path / "sr.dcm") == "DICOM has no pixel data"
    with pytest.raises(ImageReadError, match="DICOM has no pixel data"):
        probe(tmp_path / "sr.dcm")


def test_dicom_truncated_pixel_data(tmp_path):
    arr = (np.arange(96 * 80).reshape(96, 80) % 4096).astype(np.uint16)
    path = _dicom(tmp_path / "cut.dcm", arr, "MONOCHROME2", 12)
    path.write_bytes(path.read_bytes()[:-1000])
    assert probe(path).width == 80  # the header is intact
    assert _reason(path) == "truncated image data"


# ------------------------------------------------------------------ refusals


def test_missing_empty_and_non_image_files(tmp_path):
    assert _reason(tmp_path / "nope.png") == "file not found"
    (tmp_path / "empty.png").write_bytes(b"")
    assert _reason(tmp_path / "empty.png") == "empty file"
    (tmp_path / "notes.png").write_text("patientid,finding\n1,COVID-19\n")
    assert _reason(tmp_path / "notes.png") == "not an image file"
    (tmp_path / "random.dcm").write_bytes(np.random.default_rng(1).bytes(4000))
    assert _reason(tmp_path / "random.dcm") == "not an image file"
    assert _reason(tmp_path) == "not a regular file"
    for name in ("nope.png", "empty.png", "notes.png", "random.dcm"):
        with pytest.raises(ImageReadError):
            probe(tmp_path / name)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg(tmp_path, fmt):
    path = tmp_path / "cut.img"
    Image.fromarray(_gray8(200, 200)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert probe(path).width == 200  # the header is intact, the pixels are not
    assert _reason(path).startswith("truncated image data")
    path.write_bytes(data[:20])  # cut inside the header
    assert _reason(path) == "truncated image data"


def test_too_small_refused_from_header(tmp_path):
    Image.fromarray(_gray8(40, 40)).save(tmp_path / "tiny.png")
    assert _reason(tmp_path / "tiny.png") == f"too small (40x40 px, need >= {MIN_SIDE})"
    assert read_image(tmp_path / "tiny.png", min_side=32)[0].shape == (40, 40)
    Image.fromarray(_gray8(300, 50)).save(tmp_path / "strip.jpg")
    assert _reason(tmp_path / "strip.jpg") == "too small (50x300 px, need >= 64)"


def test_pixel_limit_checked_before_decoding(tmp_path, monkeypatch):
    # 15000 x 15000 = 225 MP: above Pillow's own DecompressionBombError threshold (~179 MP), so
    # this also shows our check (with its clearer message) runs first
    path = _big_bilevel_png(tmp_path / "bomb.png", 15000, 15000)
    assert path.stat().st_size < 100_000

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    msg = f"too many pixels (15000x15000 = 225,000,000 > limit {DEFAULT_MAX_PIXELS:,})"
    assert _reason(path) == msg
    with pytest.raises(ImageReadError, match=r"too many pixels"):
        probe(path)


def test_configurable_pixel_limit_on_png_jpeg_and_dicom(tmp_path):
    _big_bilevel_png(tmp_path / "b.png", 300, 200)
    assert _reason(tmp_path / "b.png", max_pixels=50_000) == (
        "too many pixels (300x200 = 60,000 > limit 50,000)"
    )
    img, info = read_image(tmp_path / "b.png", max_pixels=60_000)
    assert img.shape == (200, 300) and info.bit_depth == 1 and img.max() == 0.0
    # a JPEG whose frame header claims 30000 x 30000 is refused without decoding anything
    Image.fromarray(_gray8(64, 64)).save(tmp_path / "j.jpg")
    data = bytearray((tmp_path / "j.jpg").read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)
    (tmp_path / "j.jpg").write_bytes(bytes(data))
    assert _reason(tmp_path / "j.jpg").startswith("too many pixels (30000x30000 = 900,000,000")
    arr = np.zeros((100, 100), np.uint16)
    path = _dicom(tmp_path / "d.dcm", arr, "MONOCHROME2", 12)
    assert _reason(path, max_pixels=9_999) == "too many pixels (100x100 = 10,000 > limit 9,999)"


def test_corrupted_files_only_ever_raise_image_read_error(tmp_path):
    """Seeded fuzz: truncations and byte flips of PNG/JPEG/TIFF/DICOM never leak library errors."""
    rng = np.random.default_rng(7)
    sources = []
    for fmt in ("PNG", "JPEG", "TIFF"):
        Image.fromarray(_gray8(80, 96)).save(tmp_path / "src", format=fmt)
        sources.append((tmp_path / "src").read_bytes())
    arr = _gray8(80, 96).astype(np.uint16) * 16
    sources.append(_dicom(tmp_path / "src.dcm", arr, "MONOCHROME1", 12).read_bytes())
    outcomes = set()
    for i in range(240):
        data = bytearray(sources[i % len(sources)])
        if i % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        else:  # flip bytes, half the time inside the header
            span = 400 if i % 3 == 1 else len(data)
            for j in rng.integers(0, span, size=int(rng.integers(1, 8))):
                data[j] = int(rng.integers(256))
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(bytes(data))
        for fn in (probe, read_image):
            try:
                fn(path)
                outcomes.add("ok")
            except ImageReadError as err:
                outcomes.add(err.reason.split(" (")[0])
    assert {"ok", "truncated image data", "not an image file"} <= outcomes


# ------------------------------------------------------------------ real samples


def test_real_rsna_dicom_jpeg_baseline(shared_data):
    files = sorted(
        (shared_data / "RSNAPDD/rsna-pneumonia-detection-challenge/stage_2_train_images").glob(
            "*.dcm"
        )
    )
    assert files
    img, info = read_image(files[0])
    assert img.shape == (1024, 1024) and img.dtype == np.float32
    assert (info.format, info.view, info.photometric, info.bit_depth) == (
        "DICOM",
        "AP",
        "MONOCHROME2",
        8,
    )
    assert img.min() == 0.0 and img.max() == 1.0 and 0.2 < img.mean() < 0.8


def test_real_png_rgba_named_jpg(shared_data):
    # the ieee8023 set stores PNG RGBA files under .jpg names: content decides
    path = shared_data / "CCXRD/covid-chestxray-dataset/images/000001-12.jpg"
    img, info = read_image(path)
    assert (info.format, info.photometric, info.width, info.height) == ("PNG", "RGBA", 373, 361)
    with Image.open(path) as im:
        expected = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    assert img.shape == (361, 373) and np.abs(img - expected).max() <= 1 / 255 + 1e-6


def test_real_jpeg(shared_data):
    images = shared_data / "FCCXRD/Figure1-COVID-chestxray-dataset/images"
    path = next(p for p in sorted(images.glob("*.jpg")) if Image.open(p).mode == "L")
    img, info = read_image(path)
    assert info.format == "JPEG" and info.photometric == "L"
    with Image.open(path) as im:
        np.testing.assert_allclose(img, np.asarray(im) / 255.0, atol=1e-6)


# ------------------------------------------------------------------ to_uint8 / fit_square


def test_to_uint8():
    out = to_uint8(np.array([[-0.5, 0.0, 0.5, 1.0, 2.0]], np.float32))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0, 128, 255, 255]]
    same = np.zeros((2, 2), np.uint8)
    assert to_uint8(same) is same
    with pytest.raises(ValueError):
        to_uint8(np.zeros((2, 2), np.int32))


def test_fit_square_letterboxes_wide_image_symmetrically():
    img = np.ones((50, 100), np.float32)
    out = fit_square(img, 100)
    assert out.shape == (100, 100) and out.dtype == np.float32
    assert (out[:25] == 0).all() and (out[75:] == 0).all() and (out[25:75] == 1).all()
    tall = fit_square(np.full((100, 51), 200, np.uint8), 100)
    assert tall.dtype == np.uint8
    assert (tall[:, :24] == 0).all() and (tall[:, 24:75] == 200).all() and (tall[:, 75:] == 0).all()


def test_fit_square_downscale_is_area_average_and_keeps_dtype():
    img = np.zeros((64, 128), np.uint8)
    img[:, ::2] = 255  # 1-px stripes: an area filter averages them, nearest would alias
    out = fit_square(img, 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert (out[:8] == 0).all() and (out[24:] == 0).all()
    assert (np.abs(out[8:24].astype(int) - 128) <= 1).all()
    f = fit_square(img.astype(np.float64) / 255, 32)
    assert f.dtype == np.float64 and np.allclose(f[8:24], 0.5, atol=1e-6)
    up = fit_square(np.full((64, 32), 0.5, np.float32), 128)  # enlarged x2, bilinear
    assert up.shape == (128, 128) and up.min() >= 0.0 and up.max() <= 0.5
    assert (up[:, :30] == 0).all() and np.allclose(up[:, 34:94], 0.5) and (up[:, 98:] == 0).all()


def test_fit_square_masks_stay_binary_by_majority_vote():
    mask = np.zeros((60, 90), np.uint8)
    mask[10:50, 10:40] = 255
    mask[10:50, 50:80] = 255
    out = fit_square(mask, 45, mask=True)
    assert out.shape == (45, 45) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 255}
    assert out.mean() / 255 == (fit_square(mask, 45) >= 128).mean()  # the image rule, then >= 0.5
    assert (out[:7] == 0).all() and (out[38:] == 0).all()  # 15-px bands scaled by 1/2
    boolean = fit_square(mask > 0, 30, mask=True)
    assert boolean.dtype == np.bool_ and boolean.shape == (30, 30)
    with pytest.raises(ValueError):
        fit_square(np.zeros((0, 5)), 10)
