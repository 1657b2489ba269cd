"""A loaded predictor over the tiny run, and a real uvicorn server on loopback for it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxrguide.inference.predictor import Predictor
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


@pytest.fixture(scope="package")
def live_server(predictor) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of the app served by uvicorn in a thread."""
    import uvicorn

    from cxrguide.serve.app import create_app

    app = create_app(predictor, max_upload_bytes=2 * 1024 * 1024)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="warning", lifespan="on"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=30)
