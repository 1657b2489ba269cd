"""The server under real-world and hostile input: non-radiographs, slow clients, offline docs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from cxr_testutils import png_bomb
from cxrguide.serve.app import create_app
from cxrguide.serve.protocol import header_timeout_protocol
from inference_helpers import film

pydicom = pytest.importorskip("pydicom")


@pytest.fixture
def client(predictor):
    with TestClient(create_app(predictor), base_url="http://localhost") as c:
        yield c


@contextlib.contextmanager
def served(predictor, **kwargs) -> Iterator[tuple[str, int]]:
    """(host, port) of a real uvicorn server over ``create_app(predictor, **kwargs)``."""

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(predictor, **kwargs), log_level="critical", timeout_keep_alive=2)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _slow_upload(host: str, port: int) -> socket.socket:
    """A client that announced a 5000-byte upload and sent 4 bytes of it."""
    s = socket.create_connection((host, port))
    s.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
        b"boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r"
    )
    return s


def test_non_radiograph_dicom_refused_unless_allowed(client, predictor, monkeypatch):
    ct = pydicom.data.get_testdata_file("CT_small.dcm")
    data = Path(ct).read_bytes()
    r = client.post("/v1/predict", files={"file": ("ct.dcm", data, "application/dicom")})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "DICOM modality CT is not a radiograph" in detail
    assert "--allow-modality" not in detail and "operator can set allow_modality=CT" in detail
    monkeypatch.setattr(predictor, "allow_modality", ("CT",))
    r = client.post("/v1/predict", files={"file": ("ct.dcm", data, "application/dicom")})
    assert r.status_code == 200
    body = r.json()
    assert body["reliable"] is False
    assert body["warnings"][0].startswith("non_radiograph: modality CT is not")


def test_png_bomb_and_decode_deadline_answer_422_in_a_web_clients_terms(
    client, predictor, monkeypatch, tmp_path
):
    data = png_bomb(tmp_path / "bomb.png").read_bytes()
    start = time.perf_counter()
    r = client.post("/v1/predict", files={"file": ("b.png", data, "image/png")})
    assert r.status_code == 422 and time.perf_counter() - start < 2.0
    assert "PNG holds more image data than its 256x256 header needs" in r.json()["detail"]
    monkeypatch.setattr(predictor, "decode_timeout_s", 1e-9)
    png = film(tmp_path / "f.png").read_bytes()
    r = client.post("/v1/predict", files={"file": ("f.png", png, "image/png")})
    detail = r.json()["detail"]
    assert r.status_code == 422 and "the decode deadline" in detail
    assert "--decode-timeout-s" not in detail and "operator can set decode_timeout_s" in detail


def test_radiograph_is_reliable_without_warnings(client, tmp_path):
    data = film(tmp_path / "f.png").read_bytes()
    body = client.post("/v1/predict", files={"file": ("f.png", data, "image/png")}).json()
    assert body["reliable"] is True and body["warnings"] == []


def test_docs_are_served_without_a_cdn_and_head_works(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "docs-assets/swagger-ui-bundle.js" in page.text and "cdn" not in page.text.lower()
    js = client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.head("/").status_code == 200


def test_slow_uploads_time_out_and_do_not_block_others(predictor, tmp_path):
    image = film(tmp_path / "f.png").read_bytes()
    with served(predictor, body_timeout_s=1.5, max_concurrent=3) as (host, port):
        slow = [_slow_upload(host, port) for _ in range(2)]
        time.sleep(0.3)
        t0 = time.monotonic()
        r = httpx.post(
            f"http://{host}:{port}/v1/predict",
            files={"file": ("f.png", image, "image/png")},
            timeout=60,
        )
        assert r.status_code == 200 and time.monotonic() - t0 < 1.4  # before the slow ones end
        for s in slow:
            s.settimeout(10)
            assert s.recv(100).startswith(b"HTTP/1.1 408")
            s.close()


def test_upload_cap_answers_503_at_once(predictor, tmp_path):
    image = film(tmp_path / "f.png").read_bytes()
    with served(predictor, body_timeout_s=5, max_concurrent=1) as (host, port):
        slow = _slow_upload(host, port)
        time.sleep(0.3)
        t0 = time.monotonic()
        r = httpx.post(
            f"http://{host}:{port}/v1/predict",
            files={"file": ("f.png", image, "image/png")},
            timeout=60,
        )
        assert r.status_code == 503 and "busy" in r.json()["detail"]
        assert time.monotonic() - t0 < 2 and r.headers["retry-after"] == "5"
        slow.close()


def test_header_timeout_closes_a_silent_connection(predictor):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(predictor), log_level="critical", http=header_timeout_protocol(0.5)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    host, port = sock.getsockname()[:2]
    try:
        silent = socket.create_connection((host, port))
        silent.sendall(b"GET /v1/hea")  # never finishes its headers
        silent.settimeout(5)
        t0 = time.monotonic()
        assert silent.recv(100) == b""  # closed by the server
        assert time.monotonic() - t0 < 3
        r = httpx.get(f"http://{host}:{port}/v1/health", timeout=10)
        assert r.status_code == 200  # a normal client on the same server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
