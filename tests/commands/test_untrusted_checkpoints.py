"""Opening a run folder never runs code: a pickle payload planted in every checkpoint a command
reads (model.pt, best.pt, last.pt, the lung run's best.pt, tune and pretrain checkpoints) is
refused with one line naming the file, exit 2, and the payload never runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from checkpoint_payloads import payload_works, plant
from cxrguide.cli import build_parser, main
from cxrguide.config import config_from_args
from cxrguide.config.pretrain import PretrainConfig
from cxrguide.core.checkpoint import UnsafeCheckpointError
from cxrguide.experiments.phantom_body import build_recipe
from cxrguide.training.tune import _replay_history
from inference_helpers import film, gated_run, lung_run, tiny_prepared, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _refused(capsys, args: list[str], planted: Path, marker: Path) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), "the planted payload ran"
    # one error line, naming the file (a warning line about the run may come before it)
    errors = [line for line in err.splitlines() if "refused" in line]
    assert len(errors) == 1 and str(planted) in errors[0] and "Traceback" not in err, err


@pytest.fixture
def gated_copy(tmp_path_factory, tmp_path) -> Path:
    run = tmp_path / "shared-run"
    shutil.copytree(gated_run(tmp_path_factory), run)
    return run


@pytest.mark.parametrize("target", ["model.pt", "lungs/best.pt"])
def test_predict_serve_explain_refuse_a_planted_run(gated_copy, tmp_path, capsys, target):
    marker = tmp_path / "pwned"
    planted = plant(gated_copy / target, marker)
    assert payload_works(planted, marker)
    image = str(film(tmp_path / "f.png"))
    _refused(capsys, ["predict", str(gated_copy), image, "--backend", "fp32"], planted, marker)
    _refused(
        capsys, ["serve", str(gated_copy), "--port", "0", "--backend", "fp32"], planted, marker
    )
    _refused(
        capsys,
        ["explain", str(gated_copy), image, "--out", str(tmp_path / "x"), "--device", "cpu"],
        planted,
        marker,
    )


def test_lungs_predict_refuses_a_planted_lung_run(tmp_path_factory, tmp_path, capsys):
    run = tmp_path / "lung-run"
    shutil.copytree(lung_run(tmp_path_factory), run)
    marker = tmp_path / "pwned"
    planted = plant(run / "best.pt", marker)
    image = str(film(tmp_path / "f.png"))
    _refused(capsys, ["lungs", "predict", str(run), image], planted, marker)


def test_train_resume_refuses_a_planted_last_pt(tmp_path_factory, tmp_path, capsys):
    prep = tiny_prepared(tmp_path_factory)
    out = tmp_path / "runs"
    shutil.copytree(tiny_run(tmp_path_factory).parent, out)
    marker = tmp_path / "pwned"
    planted = plant(out / "stage1-mobilenet_v2/last.pt", marker)
    args = [
        "train",
        "--stage",
        "1",
        "--data",
        str(prep),
        "--backbone",
        "mobilenet_v2",
        "--weights",
        "none",
        "--image-size",
        "64",
        "--max-epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--resume",
    ]
    _refused(capsys, args, planted, marker)


def test_tune_replay_refuses_a_planted_trial_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    planted = plant(tmp_path / "last.pt", marker)
    reported = []

    class Trial:
        def report(self, value, step):
            reported.append((value, step))

    with pytest.raises(UnsafeCheckpointError, match="last.pt: refused"):
        _replay_history(Trial(), tmp_path)
    assert not marker.exists() and not reported and planted.is_file()


def test_pretrain_resume_refuses_a_planted_work_checkpoint(tmp_path, capsys):
    out = tmp_path / "bodies"
    args = [
        "pretrain",
        "--backbone",
        "mobilenet_v2",
        "--out",
        str(out),
        "--n",
        "30",
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "1",
    ]
    cfg = config_from_args(PretrainConfig, build_parser().parse_args(args))
    work = out / ".phantom-mobilenet_v2.work"
    work.mkdir(parents=True)
    (work / "recipe.json").write_text(json.dumps(build_recipe(cfg)))
    marker = tmp_path / "pwned"
    planted = plant(work / "last.pt", marker)
    _refused(capsys, args, planted, marker)
    assert not (out / "phantom-mobilenet_v2.safetensors").exists()
