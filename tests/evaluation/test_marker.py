"""evaluation.marker: painted-out films and the shortcut section evaluate prints."""

from __future__ import annotations

import numpy as np
import torch

from cxrguide.evaluation.marker import LUNG_ENERGY_NOTE, paint_out
from cxrguide.evaluation.metrics import format_report


def test_paint_out_fills_the_box_with_its_surroundings():
    images = torch.full((2, 1, 16, 16), 0.25)
    images[0, 0, 4:8, 4:8] = 1.0  # a bright marker
    boxes = np.zeros((2, 16, 16), bool)
    boxes[0, 4:8, 4:8] = True
    out = paint_out(images, boxes)
    assert torch.allclose(out[0], torch.full((1, 16, 16), 0.25))
    assert torch.equal(out[1], images[1]) and images[0, 0, 5, 5] == 1.0  # input untouched


def test_format_report_puts_the_marker_figures_and_the_warning_next_to_lung_energy():
    report = {
        "n": 3,
        "accuracy": 1.0,
        "macro_f1": 1.0,
        "macro_auc": 1.0,
        "per_class": {},
        "confusion_matrix": [],
        "lung_energy": 0.5,
        "skipped": {"empty lung mask": 2},
        "shortcut": {
            "split": "shortcut_test",
            "n": 9,
            "accuracy": 0.25,
            "follows_marker": 0.625,
            "erased_accuracy": 0.5,
            "note": LUNG_ENERGY_NOTE,
        },
    }
    text = format_report(report)
    assert "Grad-CAM energy in the lungs  50.0%" in text
    assert "follows the marker  62.5%, marker painted out  50.0%" in text
    assert "lung energy alone is not" in text and "skipped 2 image(s): empty lung mask" in text
