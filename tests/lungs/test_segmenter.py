from pathlib import Path

import numpy as np
import pytest

from cxrguide.errors import CxrGuideError
from cxrguide.lungs.metrics import postprocess, quality
from cxrguide.lungs.segmenter import explicit_lung_run, finish_mask, run_checkpoint


def test_finish_mask_thresholds_postprocesses_and_flags_like_the_metrics():
    prob = np.zeros((32, 32), np.float32)
    prob[4:28, 3:14], prob[4:28, 18:29] = 0.9, 0.7  # two lungs
    prob[0, 0] = 0.95  # a speck post-processing removes
    raw, final, q = finish_mask(prob, 0.5, content=0.5, min_area=0.01, max_area=0.9)
    assert raw.sum() == 2 * 24 * 11 + 1 and final.sum() == raw.sum() - 1 and not final[0, 0]
    assert np.array_equal(final, postprocess(prob >= 0.5))
    assert q == quality(prob >= 0.5, final, 0.5, 0.01, 0.9)


def test_run_checkpoint_prefers_best_then_last(tmp_path: Path):
    assert run_checkpoint(tmp_path) is None
    (tmp_path / "last.pt").write_bytes(b"")
    assert run_checkpoint(tmp_path) == tmp_path / "last.pt"
    (tmp_path / "best.pt").write_bytes(b"")
    assert run_checkpoint(tmp_path) == tmp_path / "best.pt"


def test_explicit_lung_run_needs_a_config(tmp_path: Path):
    with pytest.raises(CxrGuideError, match=f"{tmp_path}: not a lung model run"):
        explicit_lung_run(tmp_path)
    (tmp_path / "config.yaml").write_text("arch: unet\n")
    assert explicit_lung_run(tmp_path) == tmp_path
