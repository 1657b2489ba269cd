"""The one reader for chest X-ray files: PNG, JPEG, DICOM (and other Pillow formats) -> gray [0, 1].

Every step that touches pixels (``inspect``, ``prepare``, ``predict``, ``serve``) goes through
:func:`read_image`, so a file is read the same way everywhere. This module dispatches by content
and owns the deadline and the error wording; the formats are read by
:mod:`cxrguide.data.pil_reader` (Pillow formats) and :mod:`cxrguide.data.dicom_reader`. The
format is detected from the content (magic bytes, DICOM preamble), never from the extension:
the public sets contain PNGs named ``.jpg``. Size limits are checked from the header before any
pixel is decoded, so a decompression bomb costs a few header bytes, and a refused file raises
:class:`~cxrguide.errors.ImageReadError` with a short reason instead of a library exception.

Intensity: one rule for every format (:mod:`cxrguide.data.intensity`), on the full-resolution
pixels before any resize: rescale -> DICOM padding masked -> [0, 1] by the file's window or VOI
LUT, else / 255 for 8-bit data (PNG, JPEG, 8-bit DICOM), else by the valid pixels' range ->
MONOCHROME1 inverted -> padding 0. Output: float32 HxW in [0, 1], bright = dense (bone white,
air black). RGB, palette: Pillow's 8-bit ``L`` (ITU-R 601 luminance); RGBA/LA: alpha
composited on black, so transparent regions read as air, not as bone.

Real-world guards: DICOMs that are not radiographs, or FOR PROCESSING, are refused unless
allowed (:mod:`cxrguide.data.film_flags`, which also names the warning codes); a compressed
DICOM frame whose own header disagrees with Rows/Columns is refused before decoding
(:mod:`cxrguide.data.frame_headers`); a JPEG or PNG whose data ends before the header's last
pixel, or a PNG with much more data than its rows need, is refused
(:mod:`cxrguide.data.decode_guard`); every decode has a deadline (``deadline_s``); with
``target`` the image is block-averaged to the smallest size whose longer side is still
>= target, so memory follows the output, not the header. :func:`model_input` is what the model
sees (``predict``, ``serve``, ``inspect --model-input``); the letterboxed square and its
geometry (``fit_square``, ``letterbox``, ``Letterbox``, ``unfit_square``, ``to_uint8``) live
with the one resize rule in :mod:`cxrguide.data.transforms` and are re-exported here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrguide.data import decode_guard as guard
from cxrguide.data import dicom_reader as dicom
from cxrguide.data import pil_reader as pil
from cxrguide.data.image_info import DicomRef, ImageInfo, fail, is_truncation, short
from cxrguide.data.transforms import Letterbox, fit_square, letterbox, to_uint8, unfit_square
from cxrguide.errors import ImageReadError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "DicomRef",
    "ImageInfo",
    "Letterbox",
    "fit_square",
    "letterbox",
    "model_input",
    "probe",
    "read_film",
    "read_image",
    "to_uint8",
    "unfit_square",
]

DEFAULT_MAX_PIXELS = 64_000_000
MIN_SIDE = 64
DEFAULT_DEADLINE_S = 60.0


def _read_head(path: Path) -> bytes:
    """First bytes of the file; refuses missing, non-regular and empty files."""
    try:
        if not path.exists():
            raise fail(path, "file not found")
        if not path.is_file():
            raise fail(path, "not a regular file")
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as err:
        raise fail(path, f"cannot read file ({err.strerror or short(err)})") from None
    if not head:
        raise fail(path, "empty file")
    return head


def _open(
    path: str | Path,
    max_pixels: int,
    min_side: int,
    deferred: bool,
    allow_modality: list[str] | tuple[str, ...] | None = None,
    allow_for_processing: bool = False,
) -> tuple[ImageInfo, Any]:
    path = Path(path)
    head = _read_head(path)
    if head.startswith((pil.PNG_MAGIC, pil.JPEG_MAGIC)):
        return pil.open_pil(path, head, max_pixels, min_side)
    if head[128:132] == b"DICM" or dicom.looks_like_raw_dicom(head):
        return dicom.open_film(
            path, head, max_pixels, min_side, deferred, allow_modality, allow_for_processing
        )
    return pil.open_pil(path, head, max_pixels, min_side)


def probe(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
    allow_modality: list[str] | tuple[str, ...] | None = None,
    allow_for_processing: bool = False,
) -> ImageInfo:
    """Header-only look at a file: format, size, depth, view; refuses what cannot be used."""
    info, handle = _open(path, max_pixels, min_side, True, allow_modality, allow_for_processing)
    if isinstance(handle, Image.Image):
        handle.close()
    return info


def _shape_fits(shape: tuple[int, ...], info: ImageInfo, target: int | None) -> bool:
    """The header's size, or (reduced) its aspect with the longer side >= target."""
    if guard.reduce_factor(info.width, info.height, target) == 1:
        return shape == (info.height, info.width)
    h, w = shape
    aspect_error = abs(h * info.width - w * info.height) / (info.width * info.height)
    return max(h, w) >= min(target or 0, max(info.width, info.height)) and aspect_error < 0.05


def _decode(
    handle: Any, info: ImageInfo, target: int | None, deadline: guard.Deadline, square: int | None
):
    """The pixels of an opened file (Pillow image or pydicom dataset), the letterboxed square
    when asked for, and the info to report."""
    if isinstance(handle, Image.Image):
        return pil.decode_pil(handle, info, target, deadline, square)
    return dicom.decode_film(handle, info, target, deadline, square)


def read_image(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
    *,
    allow_modality: list[str] | tuple[str, ...] | None = None,
    allow_for_processing: bool = False,
    target: int | None = None,
    deadline_s: float | None = DEFAULT_DEADLINE_S,
) -> tuple[np.ndarray, ImageInfo]:
    """Decode any supported CXR file to float32 HxW in [0, 1] (bright = dense) and its info.

    ``allow_modality``: DICOM modalities to read besides the radiographs (``["all"]``: any);
    ``allow_for_processing``: read raw detector data (with the ``for_processing`` warning).
    ``target``: the caller only needs a longer side of this many pixels; the image comes back
    block-averaged by the largest integer factor that keeps it (``info`` keeps the file's size).
    ``deadline_s``: refuse the file when decoding takes longer (None: no limit).
    """
    gray, _, info = read_film(
        path,
        max_pixels,
        min_side,
        allow_modality=allow_modality,
        allow_for_processing=allow_for_processing,
        target=target,
        deadline_s=deadline_s,
    )
    return gray, info


def read_film(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
    *,
    allow_modality: list[str] | tuple[str, ...] | None = None,
    allow_for_processing: bool = False,
    target: int | None = None,
    square: int | None = None,
    deadline_s: float | None = DEFAULT_DEADLINE_S,
) -> tuple[np.ndarray, np.ndarray | None, ImageInfo]:
    """:func:`read_image`, plus (``square``) the film letterboxed to ``square x square`` from
    its full-resolution pixels, float32 (``prepare``'s cache and the model input are made so:
    a detour through the block-averaged image shifts the film by up to a block)."""
    deadline = guard.Deadline(deadline_s)
    info, handle = _open(path, max_pixels, min_side, False, allow_modality, allow_for_processing)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gray, box, info = _decode(handle, info, target, deadline, square)
    except ImageReadError:
        raise
    except guard.DecodeRefusal as err:
        raise fail(info.path, str(err), err.remedy) from None
    except MemoryError:
        raise fail(info.path, "not enough memory to decode") from None
    except Exception as err:  # decoder errors come in many types (OSError, ValueError, ...)
        if is_truncation(err):
            raise fail(info.path, "truncated image data") from None
        if info.format == "DICOM":
            raise fail(info.path, dicom.decode_reason(handle, err)) from None
        raise fail(info.path, f"cannot decode {info.format} data ({short(err)})") from None
    finally:
        if isinstance(handle, Image.Image):
            handle.close()
    if not _shape_fits(gray.shape, info, target):
        raise fail(info.path, f"decoded shape {gray.shape} does not match the header")
    return np.ascontiguousarray(gray, dtype=np.float32), box, info


def model_input(path: str | Path, size: int, **reader: Any) -> tuple[np.ndarray, ImageInfo]:
    """The ``(size, size)`` float32 square the model sees for a file, and the file's info.

    :func:`read_film`'s letterboxed square (``reader``: its keyword limits) in 8-bit levels,
    as the training cache holds them. ``predict``, ``serve`` and ``inspect --model-input``
    all call this.
    """
    _, square, info = read_film(path, target=size, square=size, **reader)
    return to_uint8(square).astype(np.float32) / np.float32(255), info
