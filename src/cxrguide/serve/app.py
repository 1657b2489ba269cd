"""`cxrguide serve RUN`: a FastAPI REST API and a small web page over one trained run.

- ``POST /v1/predict`` (multipart, one file part ``file``: PNG, JPEG or DICOM; ``?cam=true``
  adds a Grad-CAM overlay PNG, base64) -> label, probabilities, lung coverage and quality.
- ``GET /v1/health``, ``GET /v1/model`` (run id, backbone, stage, classes, training data).
- ``GET /`` the page for a person (drop an X-ray, see probabilities, heatmap, lung contour);
  OpenAPI docs at ``/docs``, served with their Swagger UI assets from the ``fastapi-offline``
  package (``/docs-assets``), so the page works offline and loads nothing from a CDN.

Hostile input and slow or greedy clients: :mod:`cxrguide.serve.upload` (limits on size,
time and concurrency); the answers' schema: :mod:`cxrguide.serve.schemas`.

The front door (:mod:`cxrguide.serve.guard`): a ``Host`` allow-list (loopback names by
default), cross-site writes refused, an optional bearer ``token`` on every ``/v1/*`` call, and
protective headers on every response. ``redact`` replaces the client's file name in answers by
a salted hash (:mod:`cxrguide.inference.redact`). ``GET /v1/model`` is computed once, when the
app is created (never a file read per request), and carries no server paths.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from cxrguide.config.inference import CAM_METHODS, CamMethod
from cxrguide.errors import CxrGuideError, ImageReadError
from cxrguide.inference.dicom_out import DicomWriter
from cxrguide.inference.predictor import Prediction, Predictor
from cxrguide.inference.redact import Redactor
from cxrguide.serve.guard import LOOPBACK_HOSTS, guard
from cxrguide.serve.schemas import (
    DISCLAIMER,
    UPLOAD_BODY,
    DicomSource,
    DicomWritten,
    PredictResponse,
    to_response,
)
from cxrguide.serve.upload import file_part, read_body, safe_name, trim_heap

STATIC = Path(__file__).with_name("static")
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _png_base64(rgb: Any) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _no_paths(value: Any) -> Any:
    """``value`` with every string that holds a path cut to its last part (``kind:`` kept)."""
    if isinstance(value, dict):
        return {k: _no_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_paths(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        kind, sep, rest = value.partition(":")
        if not sep or len(kind) == 1 or "/" in kind or "\\" in kind:  # no kind: (or a drive)
            kind, sep, rest = "", "", value
        return kind + sep + rest.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return value


def _write_dicom(writer: Any, pred: Prediction) -> DicomWritten | None:
    """The SR + SC of a DICOM upload (``serve --dicom-out``); None otherwise."""
    if writer is None or pred.info.format != "DICOM":
        return None
    try:
        result = writer.write(pred)
    except CxrGuideError as err:
        return DicomWritten(not_written=str(err))
    return DicomWritten(
        sr_sop_instance_uid=result.sr_uid,
        sc_sop_instance_uid=result.sc_uid,
        seg_sop_instance_uid=result.seg_uid,
    )


def create_app(
    predictor: Predictor,
    *,
    max_upload_bytes: int = 32 * 1024 * 1024,
    max_concurrent: int = 16,
    max_decodes: int = 2,
    body_timeout_s: float = 30.0,
    token: str | None = None,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    redact: Redactor | None = None,
    dicom_out: Path | None = None,
) -> FastAPI:
    """The app over one loaded run. Pixel and modality limits are the predictor's; ``token``,
    ``allowed_hosts`` and ``redact`` as in the module docstring; ``dicom_out``: write an SR +
    Grad-CAM Secondary Capture there for each DICOM upload."""
    writer = None
    if dicom_out is not None:
        writer = DicomWriter(predictor, dicom_out)
    workdir = Path(tempfile.mkdtemp(prefix="cxrguide-serve-"))  # mode 0700

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        shutil.rmtree(workdir, ignore_errors=True)

    app = FastAPI(
        title="cxrguide",
        version="1",
        summary="Chest X-ray classification (Normal / Pneumonia / COVID-19). " + DISCLAIMER,
        lifespan=lifespan,
        docs_url=None,  # served below with local assets
        redoc_url=None,
    )
    _local_docs(app)
    guard(app, token=token, hosts=allowed_hosts)
    app.state.predictor = predictor
    app.state.workdir = workdir
    weakref.finalize(app, shutil.rmtree, workdir, True)
    uploads = {"active": 0}  # requests between accept and answer (event loop only: no lock)
    decoders = asyncio.Semaphore(max_decodes)
    started_at = time.time()

    def infer(data: bytes, name: str | None, cam: bool, method: str) -> PredictResponse:
        started = time.perf_counter()
        name = safe_name(name)
        if redact is not None and name is not None:
            name = redact(name)
        path = workdir / f"{uuid.uuid4().hex}.upload"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            del data
            pred = predictor.predict_file(path, source=name or "upload")
            overlay = _png_base64(predictor.cam(pred, method)) if cam else None
            written = _write_dicom(writer, pred)
            response = to_response(
                pred, predictor.run_id, name, started, overlay, method if cam else None
            )
            if pred.uids:
                response.dicom_source = DicomSource(**pred.uids)
            response.dicom_written = written
            return response
        finally:
            path.unlink(missing_ok=True)
            trim_heap()

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        openapi_extra=UPLOAD_BODY,
        responses={400: {}, 408: {}, 413: {}, 415: {}, 422: {}, 503: {}},
    )
    async def predict(
        request: Request,
        cam: Annotated[bool, Query(description="add a Grad-CAM overlay PNG (base64)")] = False,
        method: Annotated[CamMethod, Query(description="CAM method for the overlay")] = "gradcam",
    ) -> PredictResponse:
        """Label one chest X-ray (multipart part ``file``: PNG, JPEG or DICOM)."""
        if uploads["active"] >= max_concurrent:
            raise HTTPException(
                503,
                f"busy: {max_concurrent} uploads in progress; retry shortly",
                headers={"Retry-After": "5"},
            )
        uploads["active"] += 1
        try:
            body = await read_body(request, max_upload_bytes, body_timeout_s)
            data, name = await file_part(request, body, max_upload_bytes)
            del body
            async with decoders:
                return await run_in_threadpool(infer, data, name, cam, method)
        except ImageReadError as err:
            status = 413 if err.reason.startswith("too many pixels") else 422
            # the remedy in a web client's terms: it cannot pass the server's flags
            raise HTTPException(
                status, f"cannot use this image: {err.reason_for('rest')}"
            ) from None
        finally:
            uploads["active"] -= 1

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "run_id": predictor.run_id,
            "backend": predictor.backend,
            "uptime_s": round(time.time() - started_at, 1),
        }

    card = _no_paths(
        {
            **predictor.describe(),
            "limits": {
                "max_upload_bytes": max_upload_bytes,
                "max_pixels": predictor.max_pixels,
                "min_side": predictor.min_side,
                "allow_modality": list(predictor.allow_modality),
                "max_concurrent_uploads": max_concurrent,
                "max_decodes": max_decodes,
                "body_timeout_s": body_timeout_s,
            },
            "auth": "bearer" if token else None,
            "cam_methods": list(CAM_METHODS),
            "disclaimer": DISCLAIMER,
        }
    )

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        """The run's description, computed once at start-up (no file reads per request)."""
        return card

    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.api_route(
        "/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False
    )
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    return app


def _local_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI with its JS/CSS from the ``fastapi-offline`` wheel, not a CDN."""
    import fastapi_offline

    assets = Path(fastapi_offline.__file__).with_name("static")
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="cxrguide API",
            swagger_js_url="docs-assets/swagger-ui-bundle.js",
            swagger_css_url="docs-assets/swagger-ui.css",
            swagger_favicon_url="docs-assets/favicon.png",
        )


__all__ = ["DISCLAIMER", "create_app"]
