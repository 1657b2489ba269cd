import numpy as np

from cxrguide.data.synthetic.anatomy import render_body, sample_anatomy
from cxrguide.data.synthetic.styles import (
    NEUTRAL,
    apply_border,
    border_box,
    expose,
    match_histogram,
    sample_acquisition,
    style_for,
)


def test_styles_are_fixed_per_index_and_differ():
    assert style_for(0) == NEUTRAL
    assert style_for(2) == style_for(2)
    s1, s2 = style_for(1), style_for(2)
    assert s1 != s2 and s1.index == 1
    for k in range(1, 20):
        s = style_for(k)
        assert 0 <= s.black < s.white <= 1 and s.border in ("none", "black", "white")


def test_match_histogram_reproduces_the_reference_distribution():
    rng = np.random.default_rng(0)
    ref = rng.beta(2, 5, (64, 64)).astype(np.float32)
    img = (0.7 * ref + 0.3 * (rng.random((64, 64)) < 0.1)).astype(np.float32)
    out = match_histogram(img, ref)
    assert np.abs(np.sort(out.ravel()) - np.sort(ref.ravel())).max() < 0.01
    assert np.all(np.diff(out.ravel()[np.argsort(img.ravel(), kind="stable")]) >= -1e-6)  # monotone


def test_findings_do_not_change_the_global_histogram():
    rng = np.random.default_rng(1)
    body = render_body(sample_acquisition(NEUTRAL, rng).canvas(128), sample_anatomy(rng), rng)
    acq = sample_acquisition(NEUTRAL, np.random.default_rng(2))
    sick = body.att + 0.8 * body.air * (body.lung_mask == 128)  # right lung consolidated
    clean = expose(body.att, acq, np.random.default_rng(3))
    matched = expose(sick, acq, np.random.default_rng(3), reference=body.att)
    raw = expose(sick, acq, np.random.default_rng(3))
    other_noise = expose(body.att, acq, np.random.default_rng(4))

    def l1(a, b):
        return (
            np.abs(np.histogram(a, 32, (0, 1))[0] - np.histogram(b, 32, (0, 1))[0]).sum() / a.size
        )

    # with matching, the finding moves the histogram no more than a different noise draw does
    assert l1(matched, clean) <= 1.2 * l1(other_noise, clean)
    assert l1(raw, clean) > 2 * l1(matched, clean)
    lung = body.lung_mask == 128
    assert matched[lung].mean() > clean[lung].mean() + 0.1  # still visible locally


def test_air_is_dark_and_border_never_cuts_the_lungs():
    acq = sample_acquisition(NEUTRAL, np.random.default_rng(0))
    att = np.tile(np.linspace(0, 1.4, 64, dtype=np.float32), (64, 1))
    img = expose(att, acq, np.random.default_rng(0))
    assert img[:, :4].mean() < 0.1 < 0.8 < img[:, -4:].mean()
    style = style_for(next(k for k in range(1, 50) if style_for(k).border == "white"))
    lungs = np.zeros((64, 64), np.uint8)
    lungs[10:50, 1:30] = 128
    box = border_box(style, 64, lungs)
    assert box[0] <= 1
    img = np.full((64, 64), 0.5, np.float32)
    apply_border(img, style, border_box(style, 64, np.zeros((64, 64), np.uint8)))
    assert img[0, 0] > 0.9 and img[32, 32] == 0.5
