"""Tiny trained runs (Stage I, II, III at 64 px) shared by the explain and report tests.

Training even a tiny MobileNet V2 takes tens of seconds on a shared CPU, so the runs are built
once per test session under pytest's base temp folder and reused by every module that asks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cxr_testutils import make_prepared, write_lung_cache
from cxrguide.config import TrainConfig
from cxrguide.evaluation.evaluate import score_split
from cxrguide.training.dispatch import train


def tiny_runs(base: Path) -> dict[str, Path]:
    """``prep`` (with lung cache) and runs ``stage1``, ``stage2`` (from it), ``stage3`` (lung
    gate, from Stage II); built once, then read back from ``base/runs.json``."""

    index = base / "runs.json"
    if index.is_file():
        return {k: Path(v) for k, v in json.loads(index.read_text()).items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared: one thread each is the fair share
    try:
        prep = make_prepared(base / "prep")
        write_lung_cache(prep)
        common = dict(
            data=prep,
            backbone="mobilenet_v2",
            weights="none",
            image_size=64,
            max_epochs=1,
            batch_size=8,
            out=base / "runs",
            seed=0,
        )
        s1 = Path(train(TrainConfig(stage=1, **common), score_split)[0]["run"])
        s2 = Path(
            train(TrainConfig(stage=2, from_run=s1, augment=False, **common), score_split)[0]["run"]
        )
        s3 = Path(
            train(
                TrainConfig(stage=3, from_run=s2, augment=False, attention=["gate"], **common),
                score_split,
            )[0]["run"]
        )
    finally:
        torch.set_num_threads(threads)
    runs = {"prep": prep, "stage1": s1, "stage2": s2, "stage3": s3}
    index.write_text(json.dumps({k: str(v) for k, v in runs.items()}))
    return runs
