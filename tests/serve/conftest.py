"""A loaded predictor over the tiny run, and a real uvicorn server on loopback for it (with the
uvicorn settings ``cxrguide serve`` uses)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from cxrguide.commands.serve import bind
from cxrguide.config import ServeConfig
from cxrguide.inference.predictor import Predictor
from cxrguide.serve.app import create_app
from cxrguide.serve.protocol import uvicorn_config
from inference_helpers import tiny_run


@pytest.fixture(scope="package")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="package")
def predictor(run) -> Predictor:
    return Predictor(run, backend="fp32", max_pixels=400 * 400)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of ``app`` served by uvicorn in a thread, as ``serve`` runs it."""

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, ServeConfig(log_level="warning")))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="package")
def serve():
    """:func:`serving`, for test modules (conftest modules are not importable by name)."""
    return serving


@pytest.fixture(scope="package")
def live_server(predictor) -> Iterator[str]:
    """The app with its defaults (no token) on a real uvicorn server."""

    with serving(create_app(predictor, max_upload_bytes=2 * 1024 * 1024)) as url:
        yield url
