import numpy as np
from scipy import ndimage

from cxrguide.data.synthetic.findings import sample_severity


def _by_label(cases, label):
    return [c for c in cases if c.spec.label == label]


def test_findings_stay_strictly_inside_the_lungs(small_cases):
    for c in small_cases:
        assert not (c.lesion & (c.lung_mask == 0)).any()


def test_normal_films_have_no_finding(small_cases):
    for c in _by_label(small_cases, "Normal"):
        assert c.severity == 0 and not c.lesion.any()


def test_pneumonia_is_unilateral_dense_and_compact(small_cases):
    for c in _by_label(small_cases, "Pneumonia"):
        sides = set(np.unique(c.lung_mask[c.lesion]))
        assert len(sides) == 1 and sides <= {128, 255}
        lung = c.lung_mask == sides.pop()
        assert c.image[c.lesion].mean() > c.image[lung & ~c.lesion].mean() + 10  # dense
        labels, n = ndimage.label(c.lesion)
        biggest = np.bincount(labels.ravel())[1:].max()
        assert biggest >= 0.9 * c.lesion.sum()  # one lobar region, not scattered spots


def _lateralness(c) -> float:
    """Mean position of lesion pixels across their lung row: 0 medial edge, 1 lateral edge."""
    out = []
    for value, lateral_is_left in ((128, True), (255, False)):
        lung = c.lung_mask == value
        for r in np.nonzero((c.lesion & lung).any(axis=1))[0]:
            cols = np.nonzero(lung[r])[0]
            pos = (np.nonzero(c.lesion[r] & lung[r])[0] - cols.min()) / max(1, np.ptp(cols))
            out.extend(1 - pos if lateral_is_left else pos)
    return float(np.mean(out))


def test_covid_is_bilateral_peripheral_lower_zone(small_cases):
    covid = _by_label(small_cases, "COVID-19")
    lower, peripheral = 0, 0
    for c in covid:
        assert (c.lesion & (c.lung_mask == 128)).any() and (c.lesion & (c.lung_mask == 255)).any()
        lung = c.lung_mask > 0
        lower += np.nonzero(c.lesion)[0].mean() > np.nonzero(lung)[0].mean()
        peripheral += _lateralness(c) > 0.55
        if c.severity >= 0.3:  # hazy but visible (subtle cases may hide under a rib)
            assert c.image[c.lesion].mean() > c.image[lung & ~c.lesion].mean()
    assert lower >= 0.8 * len(covid) and peripheral >= 0.8 * len(covid)


def test_severity_sets_extent_and_some_cases_are_subtle(small_cases):
    sick = [c for c in small_cases if c.spec.label != "Normal"]
    sev = np.array([c.severity for c in sick])
    frac = np.array([c.lesion.sum() / (c.lung_mask > 0).sum() for c in sick])
    assert np.corrcoef(sev, frac)[0, 1] > 0.3
    draws = np.array([sample_severity("COVID-19", np.random.default_rng(i)) for i in range(400)])
    assert draws.min() > 0 and draws.max() <= 1
    assert 0.1 < (draws < 0.3).mean() < 0.4  # a share of subtle cases
