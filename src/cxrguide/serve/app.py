"""`cxrguide serve RUN`: a FastAPI REST API and a small web page over one trained run.

- ``POST /v1/predict`` (multipart, one file part ``file``: PNG, JPEG or DICOM; ``?cam=true``
  adds a Grad-CAM overlay PNG, base64) -> label, probabilities, lung coverage and quality.
- ``GET /v1/health``, ``GET /v1/model`` (run id, backbone, stage, classes, training data).
- ``GET /`` the page for a person (drop an X-ray, see probabilities, heatmap, lung contour);
  OpenAPI docs at ``/docs``, served with their Swagger UI assets from the ``fastapi-offline``
  package (``/docs-assets``), so the page works offline and loads nothing from a CDN.

Hostile input: the body is read in chunks and refused (413) past ``max_upload_bytes`` before it
is parsed, the multipart parser keeps the part in memory (never a spool file in the system temp
folder), and the bytes go to a file with a random name in a private 0700 temp folder, read by
:func:`~cxrguide.data.imaging.read_image`, which sniffs the format from content and checks the
pixel count from the header before decoding (413 for too many pixels, 422 for anything
unreadable), then deleted. The client's file name is only echoed back, never used as a path.
The model is shared and the :class:`~cxrguide.inference.predictor.Predictor` serialises
inference with a lock.

Slow and greedy clients: at most ``max_concurrent`` uploads are received or held at once (more
get 503 at once, never a queue a slow client can fill); each body must arrive within
``body_timeout_s`` (408 otherwise), so four clients sending 1 byte/s hold four upload slots for
at most that long and never the decoders; at most ``max_decodes`` images are decoded and labelled
at once, each decoded at the model's input side (memory follows the model, not the header), and
the C heap is trimmed after each (``malloc_trim``) so the memory goes back to the system. A
client that disconnects mid-upload is logged in one line.

The front door (:mod:`cxrguide.serve.guard`): a ``Host`` allow-list (loopback names by
default), cross-site writes refused, an optional bearer ``token`` on every ``/v1/*`` call, and
protective headers on every response. ``redact`` replaces the client's file name in answers by
a salted hash (:mod:`cxrguide.inference.redact`). ``GET /v1/model`` is computed once, when the
app is created (never a file read per request), and carries no server paths.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import ctypes.util
import io
import logging
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
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from cxrguide.config.inference import CAM_METHODS, CamMethod
from cxrguide.errors import CxrGuideError, ImageReadError
from cxrguide.inference.predictor import Prediction, Predictor
from cxrguide.inference.redact import Redactor
from cxrguide.serve.guard import LOOPBACK_HOSTS, guard

DISCLAIMER = (
    "Research tool, not a diagnosis. Not a medical device; do not use it for patient care. "
    "Any finding must be read by a qualified clinician."
)
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes
STATIC = Path(__file__).with_name("static")
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
log = logging.getLogger("uvicorn.error")  # uvicorn's own format and level


class LungInfo(BaseModel):
    coverage: float  # lung area / film area after post-processing
    quality: str  # ok | empty | implausible
    lungs: int
    components: int


class ImageMeta(BaseModel):
    format: str
    width: int
    height: int


class DicomSource(BaseModel):
    """A DICOM upload's identifiers (never the patient's name or ID)."""

    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPInstanceUID: str
    AccessionNumber: str


class DicomWritten(BaseModel):
    """What ``serve --dicom-out`` wrote for a DICOM upload (SOP Instance UIDs, no paths)."""

    sr_sop_instance_uid: str | None = None
    sc_sop_instance_uid: str | None = None
    seg_sop_instance_uid: str | None = None  # the lung mask, when a lung model is in play
    not_written: str | None = None  # why nothing was written (e.g. no StudyInstanceUID)


class PredictResponse(BaseModel):
    label: str
    probabilities: dict[str, float]
    lung: LungInfo | None
    image: ImageMeta
    reliable: bool  # False when any warning applies: do not read the label
    warnings: list[str]  # lateral view, allowed non-radiograph, implausible lung mask
    ood_score: float | None = None  # Mahalanobis distance to training films (null: run has none)
    calibrated: bool = False  # probabilities calibrated (temperature or vector scaling)
    filename: str | None
    run_id: str
    overlay_png_base64: str | None = None
    cam_method: str | None = None
    elapsed_ms: float
    disclaimer: str = DISCLAIMER
    dicom_source: DicomSource | None = None  # DICOM uploads only
    dicom_written: DicomWritten | None = None  # DICOM uploads under serve --dicom-out


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG, JPEG or DICOM chest X-ray",
                        }
                    },
                }  # fmt: skip
            }
        },
    }
}


def _safe_name(name: str | None) -> str | None:
    """The client's file name for display only: last component, printable, at most 120 chars."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(ch for ch in base if ch.isprintable())
    return clean[:120] or None


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body within ``timeout_s`` (408) and ``limit`` (413); a disconnect: one line."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise HTTPException(413, f"upload too large (limit {limit:,} bytes)")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit + MULTIPART_OVERHEAD:
                    raise HTTPException(413, f"upload too large (limit {limit:,} bytes)")
    except TimeoutError:
        client = request.client.host if request.client else "?"
        log.warning("upload from %s timed out after %.0f s (%d bytes received)", client,
                    timeout_s, len(body))  # fmt: skip
        raise HTTPException(408, f"upload not received within {timeout_s:g} s") from None
    except ClientDisconnect:
        client = request.client.host if request.client else "?"
        log.warning("client %s disconnected during the upload (%d bytes received)", client,
                    len(body))  # fmt: skip
        raise HTTPException(400, "client disconnected") from None
    return bytes(body)


def _trim_heap() -> None:
    """Give freed decode buffers back to the OS (glibc keeps them in its arenas otherwise)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


async def _file_part(request: Request, body: bytes, limit: int) -> tuple[bytes, str | None]:
    """The bytes and client name of the one file part, parsed in memory."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise HTTPException(415, "send the image as multipart/form-data with a part named 'file'")

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=8)
    parser.spool_max_size = limit + MULTIPART_OVERHEAD  # stay in memory: no system temp files
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise HTTPException(400, f"bad multipart body: {err.message}") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "no file part named 'file' in the upload")
        data = await upload.read()
        name = upload.filename
    finally:
        await form.close()
    if not data:
        raise HTTPException(422, "empty file")
    if len(data) > limit:
        raise HTTPException(413, f"upload too large ({len(data):,} > limit {limit:,} bytes)")
    return data, name


def _png_base64(rgb: Any) -> str:
    from PIL import Image

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


def _response(pred: Prediction, predictor: Predictor, name: str | None, started: float,
              overlay: str | None, method: str | None) -> PredictResponse:  # fmt: skip
    lung = None
    if pred.lung is not None:
        lung = LungInfo(coverage=pred.lung.area_fraction, quality=pred.lung.flag,
                        lungs=pred.lung.lungs, components=pred.lung.components)  # fmt: skip
    return PredictResponse(
        label=pred.label, probabilities=pred.probabilities, lung=lung,
        image=ImageMeta(format=pred.info.format, width=pred.info.width, height=pred.info.height),
        reliable=pred.reliable, warnings=pred.warnings, ood_score=pred.ood_score,
        calibrated=pred.calibrated,
        filename=name, run_id=predictor.run_id, overlay_png_base64=overlay,
        cam_method=method, elapsed_ms=round(1000 * (time.perf_counter() - started), 1),
    )  # fmt: skip


def _write_dicom(writer: Any, pred: Prediction) -> DicomWritten | None:
    """The SR + SC of a DICOM upload (``serve --dicom-out``); None otherwise."""
    if writer is None or pred.info.format != "DICOM":
        return None
    try:
        result = writer.write(pred)
    except CxrGuideError as err:
        return DicomWritten(not_written=str(err))
    return DicomWritten(sr_sop_instance_uid=result.sr_uid, sc_sop_instance_uid=result.sc_uid,
                        seg_sop_instance_uid=result.seg_uid)  # fmt: skip


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
    ``allowed_hosts`` and ``redact`` as in the module docstring; ``dicom_out``: write an SR + Grad-CAM Secondary
    Capture there for each DICOM upload."""
    writer = None
    if dicom_out is not None:
        from cxrguide.inference.dicom_out import DicomWriter

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
        name = _safe_name(name)
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
            response = _response(pred, predictor, name, started, overlay, method if cam else None)
            if pred.uids:
                response.dicom_source = DicomSource(**pred.uids)
            response.dicom_written = written
            return response
        finally:
            path.unlink(missing_ok=True)
            _trim_heap()

    @app.post("/v1/predict", response_model=PredictResponse, openapi_extra=_UPLOAD_BODY,
              responses={400: {}, 408: {}, 413: {}, 415: {}, 422: {}, 503: {}})  # fmt: skip
    async def predict(
        request: Request,
        cam: Annotated[bool, Query(description="add a Grad-CAM overlay PNG (base64)")] = False,
        method: Annotated[CamMethod, Query(description="CAM method for the overlay")] = "gradcam",
    ) -> PredictResponse:
        """Label one chest X-ray (multipart part ``file``: PNG, JPEG or DICOM)."""
        if uploads["active"] >= max_concurrent:
            raise HTTPException(503, f"busy: {max_concurrent} uploads in progress; retry shortly",
                                headers={"Retry-After": "5"})  # fmt: skip
        uploads["active"] += 1
        try:
            body = await _read_body(request, max_upload_bytes, body_timeout_s)
            data, name = await _file_part(request, body, max_upload_bytes)
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
        return {"status": "ok", "run_id": predictor.run_id, "backend": predictor.backend,
                "uptime_s": round(time.time() - started_at, 1)}  # fmt: skip

    card = _no_paths({**predictor.describe(), "limits": {"max_upload_bytes": max_upload_bytes,
                      "max_pixels": predictor.max_pixels, "min_side": predictor.min_side,
                      "allow_modality": list(predictor.allow_modality),
                      "max_concurrent_uploads": max_concurrent, "max_decodes": max_decodes,
                      "body_timeout_s": body_timeout_s}, "auth": "bearer" if token else None,
                      "cam_methods": list(CAM_METHODS), "disclaimer": DISCLAIMER})  # fmt: skip

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        """The run's description, computed once at start-up (no file reads per request)."""
        return card

    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse,
                   include_in_schema=False)  # fmt: skip
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
            openapi_url="openapi.json", title="cxrguide API",
            swagger_js_url="docs-assets/swagger-ui-bundle.js",
            swagger_css_url="docs-assets/swagger-ui.css",
            swagger_favicon_url="docs-assets/favicon.png",
        )  # fmt: skip
