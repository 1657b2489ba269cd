"""torchrun with two CPU processes (gloo): the same command as single-process training."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cxrguide",
        "train",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_stage1_and_stage2_under_torchrun_gloo(tiny_prepared, tmp_path):
    out = tmp_path / "runs"
    common = ["--out", str(out), "--weights", "none", "--image-size", "64", "--batch-size", "4"]
    one = _torchrun(
        "--stage",
        "1",
        "--data",
        str(tiny_prepared),
        "--backbone",
        "mobilenet_v2",
        "--max-epochs",
        "2",
        *common,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    hist = pd.read_csv(out / "stage1-mobilenet_v2/history.csv")
    assert len(hist) == 2 and hist.val_loss.notna().all()
    assert one.stdout.count("run(s)") == 1  # only rank 0 reports
    two = _torchrun(
        "--stage", "2", "--from", str(out / "stage1-mobilenet_v2"), "--max-epochs", "1", *common
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert (out / "stage2-mobilenet_v2/model.pt").exists()
    assert len(pd.read_csv(out / "leaderboard_stage2.csv")) == 1
