"""`cxrguide serve RUN [--host 127.0.0.1] [--port 8000]`: REST API and web page for one run.

``POST /v1/predict``, ``GET /v1/health``, ``GET /v1/model``, the page at ``/`` and OpenAPI docs
at ``/docs``; see :mod:`cxrguide.serve.app`. Listens on loopback unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrguide.config import ServeConfig, add_config_flags, config_from_args
from cxrguide.errors import ConfigError


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


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from cxrguide.inference.predictor import Predictor
    from cxrguide.serve.app import create_app

    cfg = config_from_args(ServeConfig, args)
    if cfg.run is None:
        raise ConfigError("serve: give RUN")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    predictor = Predictor(cfg.run, device=cfg.device, backend=cfg.backend,
                          lung_model=cfg.lung_model, max_pixels=cfg.max_pixels)  # fmt: skip
    app = create_app(predictor, max_upload_bytes=int(cfg.max_upload_mb * 1024 * 1024),
                     max_concurrent=cfg.max_concurrent)  # fmt: skip
    print(f"serving {predictor.run_id} ({predictor.info.backbone}, backend {predictor.backend}) "
          f"on http://{cfg.host}:{cfg.port}/ (API docs at /docs); research tool, not a diagnosis",
          flush=True)  # fmt: skip
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    finally:
        predictor.close()
    return 0
