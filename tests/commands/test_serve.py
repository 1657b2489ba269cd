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
    env = {**os.environ, "TMPDIR": str(systmp)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrguide", "serve", str(run), "--port", str(port),
         "--backend", "fp32", "--log-level", "warning", "--threads", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
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
        assert health.json()["status"] == "ok" and health.json()["backend"] == "fp32"
        assert [p.name for p in systmp.iterdir()][0].startswith("cxrguide-serve-")
        image = film(tmp_path / "f.png").read_bytes()
        r = httpx.post(base + "/v1/predict", files={"file": ("f.png", image, "image/png")},
                       timeout=120)  # fmt: skip
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
