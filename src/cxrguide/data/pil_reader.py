"""Films Pillow reads (PNG, JPEG and the whitelisted TIFF, BMP, WebP, JPEG 2000) -> an
:class:`~cxrguide.data.image_info.ImageInfo` from the header and gray [0, 1] pixels.

PNG and JPEG sizes come from our own header parse and are checked before Pillow sees the file
(a decompression bomb costs a few header bytes); a JPEG whose data ends before its last pixel and
a PNG with far more data than its rows need are refused (:mod:`cxrguide.data.decode_guard`).
The dispatcher is :mod:`cxrguide.data.imaging`; the intensity rule is
:mod:`cxrguide.data.intensity`'s, as for DICOM.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrguide.data import decode_guard as guard
from cxrguide.data.image_info import ImageInfo, check_size, fail, is_truncation, short
from cxrguide.errors import ImageReadError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Pillow formats accepted besides PNG/JPEG; a whitelist, because Pillow's permissive plugins
# (TGA, ...) would "identify" random binaries.
_OTHER_PIL_FORMATS = ("TIFF", "BMP", "WEBP", "JPEG2000")
_MODE_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}


def _png_header(path: Path, head: bytes) -> tuple[int, int, int]:
    """(width, height, bit depth) from the IHDR chunk, which the PNG spec puts first."""
    if len(head) < 8 + 8 + 13:
        raise fail(path, "truncated image data")
    _, ctype, width, height, depth = struct.unpack(">I4sIIB", head[8:25])
    if ctype != b"IHDR":
        raise fail(path, "corrupt PNG data (no IHDR chunk)")
    return width, height, depth


def _jpeg_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, sample precision, SOF marker) from the first SOF segment."""
    with path.open("rb") as f:
        try:
            return guard.jpeg_frame_header(f)
        except ValueError as err:
            raise fail(path, str(err)) from None


def open_pil(path: Path, head: bytes, max_pixels: int, min_side: int) -> tuple[ImageInfo, Any]:
    """Open with Pillow (header only) after our own size check; returns an unloaded image."""
    if head.startswith(PNG_MAGIC):
        width, height, depth = _png_header(path, head)
        check_size(path, width, height, max_pixels, min_side)
        formats: tuple[str, ...] = ("PNG",)
    elif head.startswith(JPEG_MAGIC):
        width, height, depth, sof = _jpeg_header(path)
        check_size(path, width, height, max_pixels, min_side)
        short_data = guard.jpeg_too_short(path.stat().st_size, sof, width, height)
        if short_data:
            raise fail(path, short_data)
        formats = ("JPEG",)
    else:
        formats, depth = _OTHER_PIL_FORMATS, 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # incl. DecompressionBombWarning: ours came first
            im = Image.open(path, formats=formats)
    except Image.DecompressionBombError as err:  # only above our limit for non-PNG/JPEG
        n, limit = (int(x) for x in re.findall(r"\d+", str(err))[:2])
        raise fail(path, f"too many pixels ({n:,} > Pillow's limit {limit:,})") from None
    except UnidentifiedImageError:
        if formats == _OTHER_PIL_FORMATS:
            raise fail(path, "not an image file") from None
        raise fail(path, f"corrupt {formats[0]} data") from None
    except Exception as err:
        if is_truncation(err):
            raise fail(path, "truncated image data") from None
        label = formats[0] if len(formats) == 1 else "image"
        raise fail(path, f"corrupt {label} data ({short(err)})") from None
    fmt = formats[0] if len(formats) == 1 else str(im.format)
    width, height = im.size
    try:
        check_size(path, width, height, max_pixels, min_side)
    except ImageReadError:
        im.close()
        raise
    bits = depth or _MODE_BITS.get(im.mode, 8)
    return ImageInfo(str(path), fmt, width, height, bits, im.mode, ""), im


def decode_pil(
    handle: Image.Image,
    info: ImageInfo,
    target: int | None,
    deadline: guard.Deadline,
    square: int | None,
) -> tuple[np.ndarray, np.ndarray | None, ImageInfo]:
    """An opened Pillow image's gray pixels, the letterboxed square when asked for, and the info
    with its intensity rule."""
    path = Path(info.path)
    if info.format == "PNG":
        refusal = guard.png_data_refusal(path, deadline.check)
        if refusal:
            raise fail(path, refusal)
    gray, box = guard.pil_gray(handle, info.bit_depth, target, path, deadline.check, square)
    rule = "8-bit /255" if info.bit_depth <= 8 else "range"
    return gray, box, dataclasses.replace(info, intensity=rule)
