from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from cxrguide.cli import build_parser, main
from cxrguide.config import TrainConfig, config_from_args
from cxrguide.evaluation import evaluate as E
from cxrguide.evaluation.evaluate import evaluate_run
from cxrguide.training import tune as T

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _tune(prep: Path, out: Path, *extra: str) -> list[str]:
    """A tiny Stage I search: random-init MobileNet V2 at 64 px, head trained on cached features."""
    return [
        "tune",
        "--data",
        str(prep),
        "--backbone",
        "mobilenet_v2",
        "--weights",
        "none",
        "--image-size",
        "64",
        "--max-epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--lr-range",
        "0.001",
        "--lr-range",
        "0.1",
        "--batch-sizes",
        "4",
        "--batch-sizes",
        "8",
        "--startup-trials",
        "1",
        "--seed",
        "0",
        "--out",
        str(out),
        *extra,
    ]


# `cxrguide` in a fresh process, with trial evaluation minus bootstrap CIs and Grad-CAM metrics
# (most of a tiny trial's CPU time; the tuner reads only the val accuracy)
FAST_CLI = """
import sys
from cxrguide.evaluation import evaluate as E
_run = E.evaluate_run
E.evaluate_run = lambda *a, **k: _run(*a, **{**k, "n_boot": 0, "attention_images": -1})
from cxrguide.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _spawn(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", FAST_CLI, *args], env=ENV, **kw)


def _exported(path: Path) -> TrainConfig:
    """Read the file the way `cxrguide train --config FILE` does."""
    return config_from_args(
        TrainConfig, build_parser().parse_args(["train", "--config", str(path)])
    )


@pytest.fixture
def fast_eval(monkeypatch):
    """In-process trials evaluate for real, minus bootstrap CIs and Grad-CAM metrics."""

    def fast(*args, **kwargs):
        return evaluate_run(*args, **{**kwargs, "n_boot": 0, "attention_images": -1})

    def fast_score(run, split, cfg):
        return fast(run, split, cfg.data, device=cfg.device, progress=False)

    monkeypatch.setattr(E, "score_split", fast_score)
    return fast_score


def test_user_errors_are_one_line(tiny_prepared, tmp_path, capsys):
    assert main(["tune", "--show", "nope", "--out", str(tmp_path)]) == 2
    assert "no study database" in capsys.readouterr().err
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert main(["tune", "--show", "nope", "--out", str(tmp_path)]) == 2
    assert "studies there: other" in capsys.readouterr().err
    assert main(["tune", "--show", "other", "--out", str(tmp_path)]) == 0
    assert "other: 0 trial(s) (none run yet)" in capsys.readouterr().out
    assert main(["tune", "--show", "other", "--out", str(tmp_path), "--export", "b.yaml"]) == 2
    assert "no completed trial yet" in capsys.readouterr().err
    assert main(_tune(tiny_prepared, tmp_path / "x", "--backbone", "a,b")) == 2
    assert "one backbone at a time" in capsys.readouterr().err
    assert main(_tune(tiny_prepared, tmp_path / "y", "--storage", "nosuchdb://u:secret@h/d")) == 2
    err = capsys.readouterr().err
    assert "cannot open" in err and "secret" not in err and len(err.strip().splitlines()) == 1
    assert main(_tune(tiny_prepared, tmp_path / "z", "--lr", "0.5")) == 2
    assert "lr_range" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_run_resumes_its_study_then_show_and_export(
    tiny_prepared, tmp_path, fast_eval, capsys
):
    out = tmp_path / "tune"
    # long enough trials (30 short epochs) that the kill lands inside trial 0's training
    args = _tune(tiny_prepared, out, "--trials", "2", "--max-epochs", "30", "--patience", "30")
    proc = _spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = out / "trial-0000/stage1-mobilenet_v2/history.csv"
    deadline = time.monotonic() + 120
    while not history.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "tune ended before the kill"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert main(args) == 0  # the same command again resumes the study
    study = optuna.load_study(study_name="stage1-mobilenet_v2", storage=f"sqlite:///{out}/study.db")
    lost, retry, fresh = sorted(study.trials, key=lambda t: t.number)
    assert lost.state == TrialState.FAIL and lost.user_attrs["pid"] == proc.pid
    assert "ended during the trial" in lost.user_attrs["error"]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert retry.params == lost.params == T.first_params(T.train_config(_cfg_of(args)))
    # the retry finished trial 0's own run folder from its checkpoint, epochs 1..30 once each
    assert retry.user_attrs["trial_dir"] == str((out / "trial-0000").resolve())
    assert list(pd.read_csv(history).epoch) == list(range(1, 31))
    assert sorted(retry.intermediate_values) == list(range(1, 31))
    assert fresh.state == TrialState.COMPLETE and not (out / "trial-0001").exists()
    capsys.readouterr()
    best_yaml = tmp_path / "best.yaml"
    assert (
        main(
            ["tune", "--show", "stage1-mobilenet_v2", "--out", str(out), "--export", str(best_yaml)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    best = max((retry, fresh), key=lambda t: (t.value, -t.number))
    assert f"best: trial {best.number}, val accuracy {best.value:.4f}" in printed
    assert "ended during the trial" in printed  # the trials table shows the lost trial's error
    exported = _exported(best_yaml)
    assert exported.lr == best.params["lr"] and exported.batch_size == best.params["batch_size"]
    assert exported.head_widths == [best.params["width_1"], best.params["width_2"]]
    assert exported.stage == 1 and exported.data == tiny_prepared and exported.max_epochs == 30
    assert (out / "optimization_history.png").exists() and (out / "trials.csv").exists()


def _cfg_of(args: list[str]) -> T.TuneConfig:
    return config_from_args(T.TuneConfig, build_parser().parse_args(args))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on a loopback port (Debian's postgresql package)."""
    if not INITDB:
        pytest.skip(
            "no PostgreSQL server: /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)"
        )
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver (pip install psycopg2-binary)")
    bindir = Path(INITDB[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="cxrpg-"))  # short path: it also holds the socket
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing")
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    root.chmod(0o700)
    data, port = root / "data", _free_port()
    subprocess.run(
        [
            *prefix,
            bindir / "initdb",
            "-D",
            data,
            "-U",
            "cxr",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *prefix,
            bindir / "pg_ctl",
            "-D",
            data,
            "-l",
            root / "server.log",
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg2://cxr@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(tiny_prepared, tmp_path, postgres_url, capsys):
    shared = [
        "--storage",
        postgres_url,
        "--study",
        "shared",
        "--trials",
        "4",
        "--total-trials",
        "4",
    ]
    workers = [
        _spawn(
            _tune(tiny_prepared, tmp_path / f"worker{i}", *shared),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = sorted(study.trials, key=lambda t: t.number)
    # the workers cooperated on one study of 4 trials (at most one extra from the last race),
    # not 4 each; numbers are gap-free and every trial ran once, in its own run folder
    assert 4 <= len(trials) <= 5
    assert [t.number for t in trials] == list(range(len(trials)))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["pid"] for t in trials} == {w.pid for w in workers}
    runs = [Path(t.user_attrs["run"]) for t in trials]
    assert len(set(runs)) == len(runs) and all((r / "model.pt").exists() for r in runs)
    for t, run in zip(trials, runs, strict=True):
        assert json.loads((run / "metrics_val.json").read_text())["accuracy"] == pytest.approx(
            t.value
        )
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == len(trials)
    assert trials[0].params["lr"] == 0.01  # the configured first trial, queued once
    assert sum(t.user_attrs.get("origin") == "configured" for t in trials) == 1
    best = max(trials, key=lambda t: (t.value, -t.number))
    capsys.readouterr()
    best_yaml = tmp_path / "best.yaml"
    report = tmp_path / "report"
    assert (
        main(
            [
                "tune",
                "--show",
                "shared",
                "--storage",
                postgres_url,
                "--out",
                str(report),
                "--export",
                str(best_yaml),
            ]
        )
        == 0
    )
    assert f"best: trial {best.number}, val accuracy {best.value:.4f}" in capsys.readouterr().out
    assert _exported(best_yaml).lr == best.params["lr"]
    assert (report / "optimization_history.png").exists()
    assert (report / "param_importances.png").exists()
    assert len(pd.read_csv(report / "trials.csv")) == len(trials)
