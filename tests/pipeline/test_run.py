"""The whole chain on a tiny synthetic set: every step runs once, then everything is reused."""

from __future__ import annotations

import pytest
import torch

from cxrguide.config import PipelineConfig
from cxrguide.pipeline.run import run_pipeline


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_then_reused(tmp_path):
    torch.set_num_threads(1)
    quick = {"image_size": 64, "max_epochs": 1, "batch_size": 8}
    cfg = PipelineConfig(
        out=tmp_path / "qs",
        synth={"n": 45, "size": 64, "workers": 1},
        prepare={"size": 64, "workers": 1},
        lungs_prepare={"size": 64, "workers": 1},
        lungs={"features": [4, 8, 16, 32, 64, 4], "max_epochs": 1, "batch_size": 8},
        stage1={**quick, "backbone": "mobilenet_v2", "weights": "none", "max_epochs": 2},
        stage2={"top": 1, **quick},
        stage3={"top": 1, "attention": ["gate", "gain"], **quick},
        explain={"per_group": 1},
    )
    logs: list[str] = []
    results = run_pipeline(cfg, log=logs.append)
    assert {r.status for r in results.values()} == {"ran"}
    report = tmp_path / "qs/report/report.html"
    assert report.exists() and report.stat().st_size > 10_000
    assert (tmp_path / "qs/stage3/stage3-mobilenet_v2/model.pt").exists()
    again = run_pipeline(cfg, log=logs.append)
    assert {r.status for r in again.values()} == {"reused"}
    # a changed Stage III section re-runs Stage III and what follows, nothing before it
    changed = run_pipeline(PipelineConfig(**{**cfg.__dict__, "stage3": {**cfg.stage3, "gain_alpha": 0.5}}),
                           log=logs.append)  # fmt: skip
    ran = {name for name, r in changed.items() if r.status == "ran"}
    assert ran == {"stage3", "explain", "report"}
