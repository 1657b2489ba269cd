"""Receiving one upload for ``serve`` within limits of size, time and memory.

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
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from typing import Any

from fastapi import HTTPException, Request
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes
log = logging.getLogger("uvicorn.error")  # uvicorn's own format and level


def safe_name(name: str | None) -> str | None:
    """The client's file name for display only: last component, printable, at most 120 chars."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(ch for ch in base if ch.isprintable())
    return clean[:120] or None


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
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
        log.warning(
            "upload from %s timed out after %.0f s (%d bytes received)",
            client,
            timeout_s,
            len(body),
        )
        raise HTTPException(408, f"upload not received within {timeout_s:g} s") from None
    except ClientDisconnect:
        client = request.client.host if request.client else "?"
        log.warning(
            "client %s disconnected during the upload (%d bytes received)", client, len(body)
        )
        raise HTTPException(400, "client disconnected") from None
    return bytes(body)


def trim_heap() -> None:
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


async def file_part(request: Request, body: bytes, limit: int) -> tuple[bytes, str | None]:
    """The bytes and client name of the one file part, parsed in memory."""

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
