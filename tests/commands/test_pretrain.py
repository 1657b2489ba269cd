"""The `pretrain` verb, and `--weights phantom` on the command line."""

from __future__ import annotations

import pytest

from cxrguide.cli import main
from cxrguide.models.weights import OFFLINE_ENV, WEIGHTS_ENV

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pretrain_help_and_a_tiny_build(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--help"])
    assert done.value.code == 0 and "--backbone" in capsys.readouterr().out
    args = [
        "pretrain",
        "--backbone",
        "mobilenet_v2",
        "--out",
        str(tmp_path),
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
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held-out clean accuracy" in out and "phantom:" in out
    assert (tmp_path / "phantom-mobilenet_v2.json").is_file()


def test_train_weights_phantom_offline_without_a_body_is_one_line(
    tiny_prepared, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    code = main(
        [
            "train",
            "--stage",
            "1",
            "--data",
            str(tiny_prepared),
            "--backbone",
            "mobilenet_v2",
            "--weights",
            "phantom",
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and OFFLINE_ENV in err and "pretrain" in err
    assert not (tmp_path / "runs").exists()
