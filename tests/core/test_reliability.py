"""reliability.safetensors: round trip, no code on load, broken files, energy by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cxrguide.core.reliability import (
    RELIABILITY_FILE,
    Reliability,
    energy_scores,
    load_reliability,
    save_reliability,
)
from cxrguide.errors import CxrGuideError


def test_round_trip(tmp_path):
    rel = Reliability(
        temperature=1.7,
        ood_threshold=12.5,
        confidence_threshold=0.8,
        n_val=30,
        means=np.arange(6.0).reshape(3, 2),
        precision=np.eye(2),
        warnings=["w"],
    )
    save_reliability(tmp_path, rel)
    got = load_reliability(tmp_path)
    assert got.temperature == 1.7 and got.ood_threshold == 12.5 and got.warnings == ["w"]
    np.testing.assert_array_equal(got.means, rel.means)
    # means (0, 1), (2, 3), (4, 5); point (3, 1): squared distances 9, 1 + 4, 1 + 16 -> min 5
    assert got.ood_scores(np.array([[3.0, 1.0]]))[0] == pytest.approx(5.0)


def test_missing_is_none_and_broken_is_one_line(tmp_path):
    assert load_reliability(tmp_path) is None
    (tmp_path / RELIABILITY_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(CxrGuideError, match=RELIABILITY_FILE):
        load_reliability(tmp_path)


def test_scale_and_energy_by_hand():
    logits = np.array([[0.0, np.log(3.0), 0.0]])
    np.testing.assert_allclose(Reliability().scale(logits), [[0.2, 0.6, 0.2]])
    np.testing.assert_allclose(
        Reliability(temperature=np.log(3.0) / np.log(2.0)).scale(logits), [[0.25, 0.5, 0.25]]
    )
    assert energy_scores(logits)[0] == pytest.approx(-np.log(5.0))


def test_vector_scaling_by_hand_and_round_trip(tmp_path):
    logits = np.array([[0.0, np.log(3.0), 0.0]])
    rel = Reliability(
        temperature=2.0,
        vector_scale=np.array([1.0, 2.0, 1.0]),
        vector_bias=np.array([0.0, -np.log(3.0), 0.0]),
        calibration="vector",
    )
    # w * z + b = (0, 2 ln 3 - ln 3, 0) = (0, ln 3, 0): 3 / 5 in the middle
    np.testing.assert_allclose(rel.scale(logits), [[0.2, 0.6, 0.2]])
    np.testing.assert_allclose(
        rel.scale(logits, "temperature"), Reliability(temperature=2.0).scale(logits)
    )
    assert rel.method == "vector" and rel.calibrated
    np.testing.assert_allclose(Reliability(temperature=2.0).affine()[0], [0.5] * 3)
    save_reliability(tmp_path, rel)
    got = load_reliability(tmp_path)
    assert got.method == "vector" and got.temperature == 2.0
    np.testing.assert_allclose(got.scale(logits), [[0.2, 0.6, 0.2]])


def test_inconsistent_vector_fields_are_one_line(tmp_path):
    save_reliability(tmp_path, Reliability(vector_scale=np.ones(3), calibration="vector"))
    with pytest.raises(CxrGuideError, match="vector_scale/vector_bias"):
        load_reliability(tmp_path)


def test_l2_feature_norm_scores_unit_vectors_and_round_trips(tmp_path):
    rel = Reliability(
        means=np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
        precision=np.eye(2),
        feature_norm="l2",
    )
    # (3, 0) -> (1, 0): on the first mean; (0, -2) -> (0, -1): 1 + 1 = 2 from (1, 0) and (-1, 0)
    np.testing.assert_allclose(
        rel.ood_scores(np.array([[3.0, 0.0], [0.0, -2.0]])), [0.0, 2.0], atol=1e-6
    )
    save_reliability(tmp_path, rel)
    assert load_reliability(tmp_path).feature_norm == "l2"
    assert (
        Reliability(means=rel.means, precision=np.eye(2)).ood_scores(np.array([[3.0, 0.0]]))[0]
        == 4.0
    )
