"""`cxrguide serve RUN [--host 127.0.0.1] [--port 8000]`: REST API and web page for one run.

``POST /v1/predict``, ``GET /v1/health``, ``GET /v1/model``, the page at ``/`` and OpenAPI docs
at ``/docs``; see :mod:`cxrguide.serve.app`. Listens on loopback unless ``--host`` says otherwise.
The port is bound before the model is loaded, so a busy port is a one-line error (exit 2) and
"serving on ..." is printed only once the socket is ours.

A non-loopback ``--host`` needs a token (``--token`` or ``CXRGUIDE_TOKEN``) or ``--insecure``:
otherwise anyone on the network could call it, and ``serve`` refuses to start (exit 2). See
docs/serving-securely.md.

``--dicom-out DIR`` writes a DICOM SR + Grad-CAM Secondary Capture per DICOM upload;
``--dicom-port PORT`` also starts a C-STORE / C-ECHO listener (:mod:`cxrguide.serve.pacs`,
docs/dicom-out.md) on the same ``--host``.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
from pathlib import Path

from cxrguide.config import ServeConfig, add_config_flags, config_from_args
from cxrguide.config.inference import TOKEN_ENV, check_token
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.files import check_writable_dir


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve a run: REST API (/v1/predict), web page (/) and OpenAPI docs (/docs)",
        description="Serve one trained run over HTTP for people and systems. Research use "
        "only: predictions are not a diagnosis.",
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder from 'cxrguide train'")
    add_config_flags(parser, ServeConfig, exclude=("run",))
    parser.set_defaults(func=run)


def _addresses(host: str, port: int) -> list[tuple]:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise CxrGuideError(f"--host {host}: cannot resolve ({err.strerror})") from None


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (127.0.0.0/8, ::1)."""
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in _addresses(host, 0))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a one-line error (busy port, unknown host...)."""
    family, _, _, _, address = _addresses(host, port)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        why = "already in use" if err.errno == errno.EADDRINUSE else err.strerror or str(err)
        raise CxrGuideError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def _start_listener(cfg: ServeConfig, predictor, sock: socket.socket):  # noqa: ANN001, ANN202
    """``--dicom-port``: the C-STORE listener (serve/pacs.py), started before uvicorn runs."""
    from cxrguide.inference.dicom_out import DicomWriter
    from cxrguide.serve.pacs import DEFAULT_AE_TITLE, PacsListener

    listener = PacsListener(
        DicomWriter(predictor, cfg.dicom_out),
        cfg.host,
        cfg.dicom_port,
        ae_title=cfg.dicom_aet,
        return_to=cfg.dicom_return,
    )
    try:
        port = listener.start()
    except BaseException:
        sock.close()
        predictor.close()
        raise
    back = f"; results sent back to {cfg.dicom_return}" if cfg.dicom_return else ""
    print(
        f"DICOM C-STORE/C-ECHO on {cfg.host}:{port}, AE title "
        f"{cfg.dicom_aet or DEFAULT_AE_TITLE + ' (any called AE accepted)'}; SR + SC into "
        f"{cfg.dicom_out}{back}",
        flush=True,
    )
    return listener


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from cxrguide.inference.predictor import Predictor
    from cxrguide.inference.redact import redactor
    from cxrguide.serve.app import create_app
    from cxrguide.serve.guard import allowed_hosts
    from cxrguide.serve.protocol import uvicorn_config

    cfg = config_from_args(ServeConfig, args)
    if cfg.run is None:
        raise ConfigError("serve: give RUN")
    token = cfg.token or os.environ.get(TOKEN_ENV, "")
    check_token(token, "token" if cfg.token else TOKEN_ENV)
    if not token and not cfg.insecure and not is_loopback(cfg.host):
        raise ConfigError(
            f"--host {cfg.host} opens the server to the network: give --token "
            f"(or {TOKEN_ENV}), or --insecure to serve without one"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sock = bind(cfg.host, cfg.port)
    try:
        predictor = Predictor(
            cfg.run,
            device=cfg.device,
            backend=cfg.backend,
            lung_model=cfg.lung_model,
            max_pixels=cfg.max_pixels,
            allow_modality=cfg.allow_modality,
            allow_for_processing=cfg.allow_for_processing,
            decode_timeout_s=cfg.decode_timeout_s,
        )
    except BaseException:
        sock.close()
        raise
    if cfg.dicom_out is not None:
        check_writable_dir(cfg.dicom_out, "dicom-out")
    app = create_app(
        predictor,
        max_upload_bytes=int(cfg.max_upload_mb * 1024 * 1024),
        max_concurrent=cfg.max_concurrent,
        max_decodes=cfg.max_decodes,
        body_timeout_s=cfg.body_timeout_s,
        token=token or None,
        allowed_hosts=allowed_hosts(cfg.host, cfg.allowed_host),
        redact=redactor(cfg.redact_paths, cfg.redact_salt or None),
        dicom_out=cfg.dicom_out,
    )
    listener = None
    if cfg.dicom_port is not None:
        listener = _start_listener(cfg, predictor, sock)
    config = uvicorn_config(app, cfg)
    host, port = sock.getsockname()[:2]
    key = "token required" if token else "NO TOKEN: anyone who can reach it" if cfg.insecure else ""
    print(
        f"serving {predictor.run_id} ({predictor.info.backbone}, backend {predictor.backend}) "
        f"on http://{host}:{port}/ (API docs at /docs{'; ' + key if key else ''}); "
        "research tool, not a diagnosis",
        flush=True,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # Ctrl-C: uvicorn has shut down cleanly and re-raised the signal (as uvicorn.run)
    finally:
        if listener is not None:
            listener.stop()
        sock.close()
        predictor.close()
    return 0
