"""`cxrguide serve RUN`: a real server process on loopback, queried and shut down cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from cxrguide.cli import main
from cxrguide.commands.serve import is_loopback
from cxrguide.config.inference import TOKEN_ENV
from cxrguide.labels import CLASSES
from inference_helpers import film, tiny_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_process_answers_and_cleans_up(tmp_path_factory, tmp_path):
    run = tiny_run(tmp_path_factory)
    port = _free_port()
    systmp = tmp_path / "tmp"
    systmp.mkdir()
    token = "token-from-the-environment"
    env = {**os.environ, "TMPDIR": str(systmp), "CXRGUIDE_TOKEN": token}
    auth = {"Authorization": f"Bearer {token}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxrguide",
            "serve",
            str(run),
            "--port",
            str(port),
            "--backend",
            "fp32",
            "--log-level",
            "warning",
            "--threads",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                health = httpx.get(base + "/v1/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        assert health.status_code == 401 and "server" not in health.headers
        health = httpx.get(base + "/v1/health", headers=auth, timeout=10)
        assert health.json()["status"] == "ok" and health.json()["backend"] == "fp32"
        assert "server" not in health.headers and health.headers["x-frame-options"] == "DENY"
        assert [p.name for p in systmp.iterdir()][0].startswith("cxrguide-serve-")
        image = film(tmp_path / "f.png").read_bytes()
        r = httpx.post(
            base + "/v1/predict",
            files={"file": ("f.png", image, "image/png")},
            headers=auth,
            timeout=120,
        )
        assert r.status_code == 200 and r.json()["label"] in CLASSES
        assert httpx.get(base + "/", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert f"on http://127.0.0.1:{port}/" in out and "not a diagnosis" in out
    assert "token required" in out and token not in out
    assert list(systmp.iterdir()) == []  # the private upload folder went with the server


def test_serve_errors_exit_2(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a trained run" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err


def test_busy_port_is_a_one_line_error_before_serving(tmp_path_factory, capsys):
    run = tiny_run(tmp_path_factory)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
    out = capsys.readouterr()
    assert "serving" not in out.out
    assert f"cannot listen on 127.0.0.1:{port}: already in use" in out.err


def test_a_network_bind_needs_a_token_or_insecure(tmp_path_factory, capsys, monkeypatch):
    """Refused before the port is bound or the model loaded: one line, exit 2."""

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    run = tiny_run(tmp_path_factory)
    capsys.readouterr()
    assert main(["serve", str(run), "--host", "0.0.0.0", "--port", "0"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1
    assert "--host 0.0.0.0 opens the server to the network: give --token" in out.err
    assert main(["serve", str(run), "--host", "0.0.0.0", "--token", "short"]) == 2
    assert "token: at least 16 characters" in capsys.readouterr().err
    monkeypatch.setenv(TOKEN_ENV, "has spaces in it but long enough")
    assert main(["serve", str(run), "--host", "0.0.0.0"]) == 2
    assert f"{TOKEN_ENV}: printable ASCII without spaces" in capsys.readouterr().err
    assert main(["serve", str(run), "--allowed-host", "a*b"]) == 2
    assert "allowed_host: 'a*b'" in capsys.readouterr().err
    monkeypatch.delenv(TOKEN_ENV)
    with socket.socket() as taken:  # past the check, the server would start: a busy port shows it
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        assert main(["serve", str(run), "--host", "0.0.0.0", "--port", port, "--insecure"]) == 2
        assert "already in use" in capsys.readouterr().err
        monkeypatch.setenv(TOKEN_ENV, "a-long-enough-token-from-env")
        assert main(["serve", str(run), "--host", "0.0.0.0", "--port", port]) == 2
        assert "already in use" in capsys.readouterr().err


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
