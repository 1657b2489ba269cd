from dataclasses import replace

import numpy as np

from cxrguide.config import SynthConfig
from cxrguide.data.synthetic import plan_dataset, render_case


def test_render_is_deterministic_and_seed_dependent():
    spec = plan_dataset(SynthConfig(n=3, seed=0, shortcut_test=0))[0]
    a, b = render_case(spec, 64), render_case(spec, 64)
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lung_mask, b.lung_mask)
    c = render_case(replace(spec, seed=1), 64)
    assert not np.array_equal(a.image, c.image)


def test_a_patients_films_share_the_chest_but_not_the_acquisition():
    specs = plan_dataset(SynthConfig(n=120, seed=2, shortcut_test=0))
    by_patient: dict[str, list] = {}
    for s in specs:
        by_patient.setdefault(s.patient_id, []).append(s)
    pairs = [v for v in by_patient.values() if len(v) == 2][:5]
    assert len(pairs) == 5

    def lungs(spec):
        return render_case(spec, 96).lung_mask > 0

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    strangers = [lungs(s) for s in specs[:6]]
    same, other = [], []
    for s1, s2 in pairs:
        m1, m2 = lungs(s1), lungs(s2)
        assert not np.array_equal(m1, m2)  # a new acquisition (position, rotation, view)
        same.append(iou(m1, m2))
        other += [iou(m1, m) for m in strangers if m is not m1]
    assert np.mean(same) > np.mean(other) + 0.05  # but the same chest


def test_every_style_frames_the_whole_lungs():
    specs = plan_dataset(SynthConfig(n=60, seed=5, styles=12, shortcut_test=0))
    for spec in specs:
        rows = np.nonzero((render_case(spec, 64).lung_mask > 0).any(axis=1))[0]
        assert rows.min() >= 0.04 * 64 and rows.max() <= 0.96 * 64  # apices and bases in view
