from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_testutils import make_prepared
from cxrguide.cli import build_parser, main, setup_logging
from cxrguide.commands import synth
from cxrguide.config import GlobalConfig
from os_faults import deny_writes, without_dac_override


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


def test_building_the_parser_loads_no_torch():
    """Every verb's flags without torch or timm: ``cxrguide --help`` stays quick (the CAM method
    names come from ``config.inference``; ``models`` imports the zoo when it runs)."""
    code = (
        "import sys; from cxrguide.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _out_commands(tmp_path: Path) -> dict[str, list[str]]:
    """synth / prepare / train argument lists, minus ``--out``, on tiny real inputs."""

    prepared = make_prepared(tmp_path / "prepared", n_per_class=4, size=32)
    films = tmp_path / "films"
    assert main(["synth", "--out", str(films), "--n", "6", "--size", "64", "--seed", "0"]) == 0
    return {
        "synth": ["synth", "--n", "6", "--size", "64", "--seed", "0"],
        "prepare": ["prepare", "--source", f"synthetic={films}", "--size", "32", "--seed", "0"],
        "train": [
            "train",
            "--stage",
            "1",
            "--data",
            str(prepared),
            "--backbone",
            "mobilenet_v2",
            "--weights",
            "none",
            "--image-size",
            "32",
            "--max-epochs",
            "1",
        ],
    }


def test_unwritable_out_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    """As a user without write permission meets it (simulated: tests run as root here)."""

    commands = _out_commands(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    capsys.readouterr()
    deny_writes(monkeypatch, locked)
    for verb, args in commands.items():
        for out, named in ((locked / "new", locked / "new"), (locked, locked)):
            assert main([*args, "--out", str(out)]) == 2, (verb, out)
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "Traceback" not in err, err
            assert err.startswith(f"cxrguide {verb}: error: {named}"), err
            assert err.endswith(": Permission denied\n"), err
    assert list(locked.iterdir()) == []  # nothing half-written


@pytest.mark.slow  # three CLI processes (~10 s each on a busy 2-core machine)
def test_unwritable_out_for_real(tmp_path, capsys):
    """The same with real permissions: a folder owned by another user, mode 0555."""

    prefix = without_dac_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: root ignores file permissions")
    commands = _out_commands(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    if prefix:  # root minus its override: the folder must belong to someone else
        os.chown(locked, 65534, 65534)
    locked.chmod(0o555)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        for verb, args in commands.items():
            out = locked / "new"
            proc = subprocess.run(
                [*prefix, sys.executable, "-m", "cxrguide", *args, "--out", str(out)],
                capture_output=True,
                text=True,
                env=env,
            )
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr == f"cxrguide {verb}: error: {out}: Permission denied\n"
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_unexpected_error_is_one_line_exit_1_and_debug_shows_the_trace(monkeypatch, capsys):
    def bug(args):
        raise KeyError("boom")

    monkeypatch.setattr(synth, "run", bug)
    monkeypatch.delenv("CXRGUIDE_DEBUG", raising=False)
    assert main(["synth", "--out", "x"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("cxrguide synth: internal error: KeyError at test_cli.py:")
    assert "'boom'" in err and "CXRGUIDE_DEBUG=1" in err
    monkeypatch.setenv("CXRGUIDE_DEBUG", "1")
    with pytest.raises(KeyError, match="boom"):
        main(["synth", "--out", "x"])


@pytest.fixture
def cxrguide_logger():
    """Put the ``cxrguide`` logger back as it was (the CLI routes it per process)."""

    logger = logging.getLogger("cxrguide")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.mark.parametrize(
    "flags, shown",
    [([], ["info", "warning"]), (["--quiet"], ["warning"]), (["-v"], ["debug", "info", "warning"])],
)
def test_library_messages_go_to_stdout_warnings_to_stderr_at_the_flag_level(
    flags, shown, cxrguide_logger, capsys
):

    args = build_parser().parse_args([*flags, "models"])
    setup_logging(GlobalConfig(verbose=args.verbose, quiet=args.quiet))
    setup_logging(GlobalConfig(verbose=args.verbose, quiet=args.quiet))  # again: not doubled
    log = cxrguide_logger.getChild("training.somewhere")
    log.debug("debug")
    log.info("info")
    log.warning("warning")
    out, err = capsys.readouterr()
    assert out.split() == [s for s in shown if s != "warning"]
    assert err.split() == ["warning"]


def test_verbose_and_quiet_together_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--verbose", "--quiet", "models"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
