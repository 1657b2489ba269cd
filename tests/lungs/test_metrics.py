from __future__ import annotations

import numpy as np
import pytest

from cxrguide.lungs.metrics import (
    content_fraction,
    flag_counts,
    postprocess,
    quality,
    segmentation_metrics,
    summarize,
)


def _lungs(size=40):
    m = np.zeros((size, size), bool)
    m[5:35, 4:17] = True
    m[5:35, 23:36] = True
    return m


def test_postprocess_keeps_two_largest_and_fills_holes():
    m = _lungs()
    m[15:20, 8:12] = False  # a hole (an opacity the net missed)
    m[0:2, 0:2] = True  # a speck
    m[37:39, 20:26] = True  # a blob below
    out = postprocess(m)
    assert np.array_equal(out, _lungs())
    assert not postprocess(np.zeros((8, 8), bool)).any()


def test_quality_flags():
    lungs = _lungs()
    q = quality(lungs, lungs)
    assert (q.flag, q.lungs, q.components) == ("ok", 2, 2)
    assert q.area_fraction == pytest.approx(lungs.mean(), abs=1e-4)
    one = lungs.copy()
    one[5:35, 17:23] = True  # lungs merged into one blob
    assert quality(one, one).flag == "implausible"
    assert quality(lungs, lungs, max_area=0.3).flag == "implausible"
    empty = np.zeros_like(lungs)
    assert quality(empty, empty).flag == "empty"
    # on a letterboxed film (content half the square) the same pixels are twice the area
    assert quality(lungs, lungs, content=0.5).area_fraction == pytest.approx(2 * lungs.mean(), 1e-3)
    assert content_fraction(100, 50) == 0.5 and content_fraction(0, 0) == 1.0


def test_metrics_per_image_against_hand_values():
    target = np.zeros((3, 32, 32), bool)
    target[:, 8:24, 8:24] = True
    pred = np.zeros_like(target)
    pred[0] = target[0]
    pred[1, 8:24, 11:27] = True  # shifted 3 px
    m = segmentation_metrics(pred, target)  # image 2: nothing predicted
    inter = 16 * 13
    assert m["dice"][0] == 1 and m["iou"][0] == 1 and m["hd95"][0] == 0
    assert m["dice"][1] == pytest.approx(2 * inter / 512)
    assert m["iou"][1] == pytest.approx(inter / (512 - inter))
    assert m["hd95"][1] == pytest.approx(3.0)
    assert m["dice"][2] == 0 and np.isnan(m["hd95"][2])
    s = summarize(m)
    assert s["n"] == 3 and s["hd95_undefined"] == 1
    assert s["dice_mean"] == pytest.approx(m["dice"].mean())
    assert s["hd95_px_mean"] == pytest.approx(1.5)


def test_two_empty_masks_agree():
    z = np.zeros((1, 16, 16), bool)
    m = segmentation_metrics(z, z)
    assert m["dice"][0] == 1 and m["iou"][0] == 1 and np.isnan(m["hd95"][0])


def test_flag_counts_per_group():
    table = flag_counts(["ok", "empty", "implausible", "ok", "ok"], ["a", "a", "a", "b", "b"])
    assert table.loc["a", ["n", "ok", "empty", "implausible"]].tolist() == [3, 1, 1, 1]
    assert table.loc["b", ["n", "ok", "empty", "implausible"]].tolist() == [2, 2, 0, 0]
    assert table.loc["all", "n"] == 5 and table.loc["all", "ok"] == 3
    assert table.loc["a", "bad_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert table.loc["b", "bad_share"] == 0.0


def test_flag_counts_rejects_unknown_flags_and_length_mismatch():
    with pytest.raises(ValueError, match="unknown flag"):
        flag_counts(["ok", "weird"], ["a", "a"])
    with pytest.raises(ValueError, match="2 flags but 1 groups"):
        flag_counts(["ok", "ok"], ["a"])
