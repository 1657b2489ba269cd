"""The one intensity rule: same pixels -> same model input, whatever the format and the size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset

from cxr_testutils import chest_like, dicom_film
from cxrguide.config import ReaderConfig
from cxrguide.data import decode_pool, intensity
from cxrguide.data.decode_guard import reduce_factor
from cxrguide.data.imaging import Letterbox, fit_square, model_input, read_image
from cxrguide.data.transforms import resize_image

SIZES = (64, 224)
TOL = 1 / 255 + 1e-6


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return path


def _same_inputs(a, b) -> float:
    worst = 0.0
    for size in SIZES:
        x, _ = model_input(a, size)
        y, _ = model_input(b, size)
        worst = max(worst, float(np.abs(x - y).max()))
    return worst


def test_8bit_png_and_8bit_dicom_give_the_same_model_input(tmp_path):
    arr = chest_like()  # 0..230: a stretch would have moved it by 25/255
    png = _png(tmp_path / "a.png", arr)
    dcm = dicom_film(tmp_path / "a.dcm", arr)
    gray, info = read_image(dcm)
    assert info.intensity == "8-bit /255"
    np.testing.assert_allclose(gray, arr / 255.0, atol=1e-6)
    assert _same_inputs(png, dcm) <= TOL


def test_monochrome1_dicom_matches_the_png(tmp_path):
    arr = chest_like()
    png = _png(tmp_path / "a.png", arr)
    dcm = dicom_film(tmp_path / "m1.dcm", (255 - arr).astype(np.uint8), "MONOCHROME1")
    assert _same_inputs(png, dcm) <= TOL


def test_16bit_png_and_12bit_dicom_go_by_the_same_range(tmp_path):
    arr = chest_like().astype(np.uint16) * 16 + 100  # 12-bit values
    png = _png(tmp_path / "a16.png", arr)
    dcm = dicom_film(tmp_path / "a12.dcm", arr, bits=12)
    assert read_image(png)[1].intensity == read_image(dcm)[1].intensity == "range"
    assert _same_inputs(png, dcm) <= TOL


def test_padding_masked_then_background_even_under_monochrome1(tmp_path):
    valid = chest_like().astype(np.uint16) * 16 + 500
    stored = valid.copy()
    stored[:, :30] = 0  # the collimator border, marked as padding
    stored[:, -30:] = 0
    inverted = (4095 - stored).astype(np.uint16)  # MONOCHROME1: low = white
    inverted[stored == 0] = 0  # padding value 0 in the inverted film too
    dcm = dicom_film(tmp_path / "pad.dcm", inverted, "MONOCHROME1", bits=12, PixelPaddingValue=0)
    gray, _ = read_image(dcm)
    assert (gray[:, :30] == 0).all() and (gray[:, -30:] == 0).all()  # air, not bone-white
    inner = valid[:, 30:-30].astype(np.float64)
    expected = (inner - inner.min()) / np.ptp(inner)  # by the valid pixels' range
    np.testing.assert_allclose(gray[:, 30:-30], expected, atol=1e-5)
    # the same pixels as a PNG that carries the answer: same model input
    png_arr = np.zeros(stored.shape, np.uint8)
    png_arr[:, 30:-30] = np.round(expected * 255).astype(np.uint8)
    assert _same_inputs(_png(tmp_path / "pad.png", png_arr), dcm) <= TOL


def test_padding_range_limit(tmp_path):
    arr = chest_like().astype(np.uint16) * 16 + 500
    arr[:10] = 7  # padding band 5..9
    arr[10:20] = 5
    dcm = dicom_film(
        tmp_path / "r.dcm", arr, bits=12, PixelPaddingValue=9, PixelPaddingRangeLimit=5
    )
    gray, _ = read_image(dcm)
    assert (gray[:20] == 0).all() and gray[20:].max() == 1.0


def test_contrast_does_not_depend_on_the_decode_size(tmp_path):
    """The old min-max after shrinking: mean 0.546 / 0.617 / 0.584 at full / 64 / 224 px."""
    rng = np.random.default_rng(1)
    arr = chest_like(900, 800).astype(np.uint16) * 16
    arr[rng.random(arr.shape) < 1e-4] = 4095  # a few hot pixels: extremes a shrink averages away
    dcm = dicom_film(tmp_path / "big.dcm", arr, bits=12)
    full, _ = read_image(dcm)
    for target in SIZES:
        small, _ = read_image(dcm, target=target)  # = the full-size result, block-averaged
        expected = intensity.block_mean(full, reduce_factor(800, 900, target))
        np.testing.assert_allclose(small, expected, atol=1e-5)


def test_prepare_cache_and_predict_input_agree(tmp_path):
    """``prepare`` decodes at 512, the dataset resizes; ``predict`` decodes at the model's side."""
    arr = chest_like(1100, 950, seed=3).astype(np.uint16) * 16 + 37
    dcm = dicom_film(
        tmp_path / "film.dcm", arr, "MONOCHROME1", bits=12, WindowCenter=2000, WindowWidth=3000
    )
    row, square, _ = decode_pool.decode((0, str(dcm), 512, ReaderConfig().limits))
    assert row["ok"] == 1 and square.shape == (512, 512)
    for size in SIZES:
        trained = resize_image(torch.from_numpy(square / np.float32(255))[None], size)[0].numpy()
        seen, _ = model_input(dcm, size)
        assert float(np.abs(trained - seen).mean()) <= 1 / 255


def test_window_and_voi_lut_map_to_unit_range(tmp_path):
    arr = np.tile(np.arange(0, 4000, 40, dtype=np.uint16), (80, 1))  # 80 x 100
    win = dicom_film(tmp_path / "w.dcm", arr, bits=12, WindowCenter=2000, WindowWidth=1001)
    gray, info = read_image(win)
    assert info.intensity == "window/VOI LUT"
    expected = np.clip((arr - 1999.5) / 1000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(gray, expected, atol=1e-6)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "OW", (np.sqrt(np.arange(4096) / 4095) * 4095).astype("<u2").tobytes())
    lut = dicom_film(tmp_path / "lut.dcm", arr, bits=12, VOILUTSequence=[item])
    gray, _ = read_image(lut)
    # 12-bit values in a 16-bit LUT: to [0, 1] by the LUT's own range, not 2**16
    np.testing.assert_allclose(gray, np.floor(np.sqrt(arr / 4095) * 4095) / 4095, atol=1e-6)


def test_normalise_in_bands_equals_whole_image():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 4096, (1500, 900)).astype(np.uint16)
    rule = intensity.Rule(padding=lambda b: b < 100, invert=True)
    got, square = intensity.normalise(arr, rule, factor=3, square=96)
    valid = arr[arr >= 100]
    unit = 1 - (arr - valid.min()) / (valid.max() - valid.min())
    unit[arr < 100] = 0
    np.testing.assert_allclose(got, intensity.block_mean(unit.astype(np.float32), 3), atol=1e-5)
    np.testing.assert_allclose(square, fit_square(unit, 96), atol=1e-5)  # the letterbox, exact


@pytest.mark.parametrize(("h", "w"), [(300, 200), (200, 300)])
def test_letterbox_geometry(h, w):
    box = Letterbox(224, h, w)
    assert box.side == 300 and box.scale == 224 / 300
    assert (box.top, box.left) == ((0, 50) if h > w else (50, 0))
