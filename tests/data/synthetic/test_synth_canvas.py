import numpy as np

from cxrguide.data.synthetic.canvas import Canvas, blur, smooth_noise, upsample


def test_grid_inverts_the_pixel_transform():
    cv = Canvas(64, zoom=1.1, angle_deg=3.0, shift=(0.02, -0.01))
    u, v = cv.grid
    back = cv.to_px(np.stack([u, v], axis=-1))
    j = np.arange(64)
    assert np.allclose(back[..., 0], j[None, :], atol=1e-3)
    assert np.allclose(back[..., 1], j[:, None], atol=1e-3)


def test_scaled_canvas_lines_up_with_the_full_one():
    cv = Canvas(128, zoom=0.95, angle_deg=-2.0)
    low = cv.scaled(4)
    u_full, v_full = cv.grid
    smooth = upsample(low.grid[0] * 1.0, 128)
    # a linear field (u) upsampled bilinearly must match the full-res field away from the border
    assert np.abs(smooth[8:-8, 8:-8] - u_full[8:-8, 8:-8]).max() < 1e-3
    assert v_full.shape == (128, 128)


def test_bands_draw_thick_curves_of_the_asked_width():
    cv = Canvas(100)
    lay = cv.layer()
    curve = np.array([[[0.2, 0.5], [0.5, 0.5], [0.8, 0.5]]])
    lay.bands(curve, [(1.0, 0.1), (0.5, 0.04)])
    a = lay.array()
    column = a[:, 50]
    assert 9 <= (column > 0).sum() <= 12  # 0.1 of 100 px
    assert 3 <= np.isclose(column, 0.5, atol=0.01).sum() <= 6  # inner stroke overwrites
    assert a[50, 10] == 0 and a[50, 90] == 0


def test_blur_keeps_mean_and_smooth_noise_is_seeded():
    a = np.zeros((64, 64), np.float32)
    a[20:40, 20:40] = 1
    for sigma in (1.0, 6.0):
        b = blur(a, sigma)
        assert abs(b.mean() - a.mean()) < 0.01
        assert 0 < b[19, 30] < 1 and 0 < b[20, 20] < 1  # edges soften
    n1 = smooth_noise(np.random.default_rng(1), 64, 8)
    n2 = smooth_noise(np.random.default_rng(1), 64, 8)
    assert np.array_equal(n1, n2) and n1.std() > 0.2
