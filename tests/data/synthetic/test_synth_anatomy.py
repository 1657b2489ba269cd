import numpy as np

from cxrguide.data.synthetic.anatomy import (
    LEFT,
    RIGHT,
    as_view,
    lung_outline,
    render_body,
    sample_anatomy,
)
from cxrguide.data.synthetic.canvas import Canvas


def _shoelace(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_lungs_sit_on_the_right_sides_and_are_simple_polygons():
    for seed in range(20):
        a = sample_anatomy(np.random.default_rng(seed))
        right, left = lung_outline(a, RIGHT), lung_outline(a, LEFT)
        assert right[:, 0].max() < a.cx < left[:, 0].min()  # patient's right = image left
        for poly in (right, left):
            cv = Canvas(256)
            filled = cv.polygon_mask(cv.to_px(poly)).sum() / 256**2
            # a self-intersecting outline would fill much less than its shoelace area
            assert abs(filled - _shoelace(poly)) < 0.01
            assert 0.06 < filled < 0.22


def test_body_mask_values_and_xray_contrast():
    rng = np.random.default_rng(0)
    body = render_body(Canvas(128), sample_anatomy(rng), rng)
    assert set(np.unique(body.lung_mask)) == {0, 128, 255}
    cols = np.nonzero(body.lung_mask == 128)[1]
    assert cols.mean() < 64 < np.nonzero(body.lung_mask == 255)[1].mean()
    lung = body.lung_mask > 0
    mediastinum = np.zeros_like(lung)
    mediastinum[40:80, 60:68] = True
    assert body.att[lung].mean() < body.att[mediastinum & ~lung].mean() - 0.3  # aerated lung dark
    assert body.att[0:4, 0:4].mean() < body.att[lung].mean()  # air outside the body darkest
    assert set(body.polygons) == {"Right Lung", "Left Lung"}


def test_anatomy_varies_between_patients_and_ap_magnifies_the_heart():
    areas, gaps = [], []
    for seed in range(12):
        a = sample_anatomy(np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        pa = render_body(Canvas(128), a, rng).lung_mask
        ap = render_body(Canvas(128), as_view(a, "AP"), rng).lung_mask
        areas.append((pa > 0).mean())
        row = int(np.nonzero(pa.any(axis=1))[0].max() * 0.85)  # heart level
        gap = lambda m, r=row: np.nonzero(m[r] == 255)[0].min() - np.nonzero(m[r] == 128)[0].max()  # noqa: E731
        gaps.append((gap(pa), gap(ap)))
    assert np.std(areas) > 0.01
    assert np.mean([ap - pa for pa, ap in gaps]) > 1  # wider cardiac silhouette on AP


def test_same_seed_same_body():
    a = sample_anatomy(np.random.default_rng(5))
    b1 = render_body(Canvas(64, angle_deg=2), a, np.random.default_rng(9))
    b2 = render_body(Canvas(64, angle_deg=2), a, np.random.default_rng(9))
    assert np.array_equal(b1.att, b2.att) and np.array_equal(b1.lung_mask, b2.lung_mask)
