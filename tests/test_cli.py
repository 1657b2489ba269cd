from __future__ import annotations

import subprocess
import sys

from cxrguide.cli import main


def test_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    code = main(
        [
            "prepare",
            "--source",
            "ieee8023=" + str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "missing" in err and "Traceback" not in err


def test_bad_config_value_exit_code_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("size: nine\n")
    assert main(["prepare", "--config", str(cfg)]) == 2
    assert "size: expected an integer" in capsys.readouterr().err


def test_console_script_help_lists_verbs():
    out = subprocess.run(
        [sys.executable, "-m", "cxrguide", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in ("prepare", "data", "inspect", "synth"):
        assert verb in out
