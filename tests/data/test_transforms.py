"""The one resize rule (images: area shrinking, bilinear enlarging; masks: the same + >= 0.5)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cxrguide.data.transforms import resize_array, resize_image, resize_mask, resize_mask_array


def test_shrinking_is_the_area_mean_on_known_arrays():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(resize_array(img, 2), [[2.5, 4.5], [10.5, 12.5]])
    # 3 -> 2: footprints [0, 1.5) and [1.5, 3), the middle pixel split half and half
    row = np.array([[0.0, 3.0, 6.0]] * 3)
    np.testing.assert_allclose(resize_array(row, 2), [[1.0, 5.0]] * 2)
    stripes = np.zeros((8, 8), np.uint8)
    stripes[:, ::2] = 255  # 1-px stripes average to gray instead of aliasing
    assert (resize_array(stripes, 4) == 128).all()


def test_area_is_opencvs_inter_area_and_bilinear_is_pillows():
    """The two halves of the rule equal the libraries' reference filters."""
    rng = np.random.default_rng(1)
    img = rng.random((300, 200)).astype(np.float32)
    for h, w in ((224, 150), (97, 31), (77, 200)):
        cv = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(resize_array(img, (h, w)), cv, atol=1e-5)
    pil = np.asarray(Image.fromarray(img).resize((410, 333), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(resize_array(img, (333, 410)), pil, atol=1e-5)


def test_enlarging_is_bilinear_with_half_pixel_centres():
    img = np.array([[0.0, 1.0]], np.float32)
    out = resize_array(img, (1, 4))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]])
    assert out.min() >= 0 and out.max() <= 1  # no overshoot


def test_numpy_and_torch_variants_agree():
    rng = np.random.default_rng(0)
    for shape, size in (((37, 37), 16), ((16, 16), 37), ((30, 30), (12, 45)), ((20, 50), (20, 7))):
        img = rng.random(shape).astype(np.float32)
        expected = resize_image(torch.from_numpy(img), size).numpy()
        assert expected.shape == ((size, size) if isinstance(size, int) else size)
        np.testing.assert_allclose(resize_array(img, size), expected, atol=1e-5)
        mask = img > 0.6
        np.testing.assert_array_equal(
            resize_mask_array(mask, size), resize_mask(torch.from_numpy(mask), size).numpy()
        )
    batch = torch.rand(3, 1, 20, 20)
    assert torch.allclose(resize_image(batch, 10)[1, 0], resize_image(batch[1, 0], 10))


def test_masks_take_the_majority_and_keep_their_dtype_and_value():
    mask = np.zeros((4, 8), np.uint8)
    mask[:, :3] = 255  # windows of 2 columns: full, 1/2 (a tie counts), empty, empty
    out = resize_mask_array(mask, (2, 4))
    assert out.dtype == np.uint8 and out.tolist() == [[255, 255, 0, 0]] * 2
    thin = np.zeros((8, 8), bool)
    thin[:, 3] = True  # a 1-px line is 1/2 of its 2-px window: kept, not lost by grid phase
    assert resize_mask_array(thin, 4)[:, 1].all()
    t = resize_mask(torch.from_numpy(mask.astype(np.float32) / 255), (2, 4))
    assert t.dtype == torch.float32 and t.tolist() == [[1.0, 1.0, 0.0, 0.0]] * 2
    # the area of a blob survives the vote within a boundary row
    blob = np.zeros((100, 100), bool)
    blob[20:71, 13:64] = True
    assert abs(resize_mask_array(blob, 33).mean() - blob.mean()) < 2 * 33 / 33**2


def test_same_size_is_a_copy_and_bad_sizes_fail():
    img = np.ones((5, 5), np.float32)
    out = resize_array(img, 5)
    assert out is not img and np.array_equal(out, img)
    t = torch.ones(5, 5)
    assert resize_image(t, 5) is t
    with pytest.raises(ValueError):
        resize_array(img, 0)
    with pytest.raises(ValueError):
        resize_array(np.zeros((0, 4)), 2)
