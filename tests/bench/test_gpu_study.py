"""bench/gpu_study.py on the CPU: the --quick protocol and the torchrun (gloo) DDP smoke mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_study  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _json(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, out[-2000:]
    return json.loads(lines[-1])


def test_quick_protocol_reports_every_stage(capsys):
    assert gpu_study.main(["--quick", "--size", "32", "--head-epochs", "1"]) == 0
    fig = _json(capsys.readouterr().out)
    assert fig["bench"] == "gpu_study" and fig["device"] == "CPU" and fig["precision"] == "fp32"
    (s1,), (s2,), (s3,) = fig["stage1"], fig["stage2"], fig["stage3"]
    assert s1["backbone"] == s2["backbone"] == s3["backbone"] == "mobilenet_v2"
    assert s1["images"] == 33 and s2["train"] + s2["val"] == 33  # train + val of 36, no test
    for row in (s1, s2, s3):
        assert row["img_s"] > 0 and "peak_mem_gib" not in row  # no GPU figures on a CPU
    assert fig["ratio_stage3_over_stage2_epoch"] > 0
    minutes = fig["protocol_minutes"]
    assert minutes["total"] == pytest.approx(
        minutes["stage1"] + minutes["stage2"] + minutes["stage3"], rel=1e-3
    )


def test_protocol_estimate_scales_measured_rates_to_the_study():
    s1 = [{"images": 90, "img_s": 90.0, "head_epoch_s": 0.0}]  # 1 s for 90 of 100 images
    s2 = [{"epoch_s": 2.0, "train": 80, "val": 10}]
    est = gpu_study.estimate_minutes(s1, s2, s2, 1000, (10, 3, 3))
    assert est["stage1"] == pytest.approx(10 / 60)  # 900 train+val images at 90 img/s
    assert est["stage2"] == pytest.approx(3 * 2.0 * 10 / 60)
    assert est["total"] == pytest.approx(est["stage1"] + 2 * est["stage2"])


@pytest.mark.slow
def test_ddp_smoke_under_torchrun_gloo_keeps_ranks_identical():
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(BENCH / "gpu_study.py"),
        "--ddp-smoke",
        "--quick",
        "--size",
        "32",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    fig = _json(done.stdout)
    assert fig["backend"] == "gloo" and fig["world_size"] == 2
    assert fig["ranks_identical"] and fig["max_weight_sum_gap"] == 0.0
