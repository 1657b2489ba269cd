"""`cxrguide serve RUN --dicom-port P --dicom-out DIR`: the command starts the C-STORE listener
beside the REST API; dcmtk's storescu sends a film and its SR lands in DIR."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time

import pydicom
import pytest

from cxrguide.cli import main
from inference_helpers import study_film, tiny_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dicom_flags_are_checked_in_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--dicom-port", "11112"]) == 2
    assert "give --dicom-out DIR" in capsys.readouterr().err
    args = ["serve", str(tmp_path), "--dicom-out", str(tmp_path), "--dicom-return", "PACS:104"]
    assert main(args) == 2
    assert "is not AE@host:port" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu not installed")
def test_serve_with_a_dicom_port(tmp_path_factory, tmp_path):
    run = tiny_run(tmp_path_factory)
    port, dicom_port, out = _free_port(), _free_port(), tmp_path / "results"
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
            "--threads",
            "1",
            "--log-level",
            "warning",
            "--dicom-port",
            str(dicom_port),
            "--dicom-out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while (
            subprocess.run(
                ["echoscu", "127.0.0.1", str(dicom_port)], capture_output=True
            ).returncode
            != 0
        ):
            assert proc.poll() is None and time.monotonic() < deadline, "listener did not come up"
            time.sleep(0.5)
        source = study_film(tmp_path / "film.dcm")
        sent = subprocess.run(
            ["storescu", "127.0.0.1", str(dicom_port), str(source)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        (sr_path,) = out.glob("SR_*.dcm")
        assert pydicom.dcmread(sr_path).StudyInstanceUID == pydicom.dcmread(source).StudyInstanceUID
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            text, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
    assert proc.returncode == 0, text
    assert f"DICOM C-STORE/C-ECHO on 127.0.0.1:{dicom_port}" in text
