"""The task check (is the phantom task a fair test?) at small size (full-size numbers:
bench/synth_fairness.py, README)."""

from dataclasses import replace

import pytest

from cxrguide.config import SynthConfig
from cxrguide.data.synthetic import plan_dataset
from cxrguide.data.synthetic import task_check as F

BASE = SynthConfig(n=450, size=64, seed=11, shortcut_test=90)


@pytest.fixture(scope="module")
def clean():
    images, specs = F.render_images(BASE, workers=2)
    y = F.labels_of(specs)
    return images, y, F.patient_split(specs)


def test_patient_split_keeps_patients_together(clean):
    specs = plan_dataset(BASE)
    train, test, shortcut = clean[2]
    assert len(shortcut) == 90 and 0.18 < len(test) / (len(train) + len(test)) < 0.32
    assert not {specs[i].patient_id for i in train} & {specs[i].patient_id for i in test}


def test_global_histogram_does_not_reveal_the_class(clean):
    images, y, (train, test, _) = clean
    assert F.histogram_baseline(images, y, train, test) <= 0.5  # chance is 1/3


@pytest.mark.slow
def test_small_cnn_learns_the_findings(clean):
    images, y, (train, test, _) = clean
    res = F.train_cnn(images[train], y[train], epochs=12, threads=1, seed=0)
    # 64 px and ~340 films: well above chance (1/3); at 128 px / 900 films it reaches ~0.95
    assert F.accuracy(res.model, images[test], y[test]) >= 0.6


@pytest.mark.slow
def test_shortcut_markers_are_learned_and_fail_on_shortcut_test():
    cfg = replace(BASE, n=300, size=48, shortcut_rate=0.95, shortcut_test=60)
    images, specs = F.render_images(cfg, workers=2)
    y = F.labels_of(specs)
    train, test, shortcut = F.patient_split(specs)
    res = F.train_cnn(images[train], y[train], epochs=8, threads=1, seed=0)
    acc_test = F.accuracy(res.model, images[test], y[test])
    acc_shortcut = F.accuracy(res.model, images[shortcut], y[shortcut])
    assert acc_test >= 0.8 and acc_test - acc_shortcut >= 0.4
