"""The one reader for chest X-ray files: PNG, JPEG, DICOM (and other Pillow formats) -> gray [0, 1].

Every step that touches pixels (``inspect``, ``prepare``, ``predict``, ``serve``) goes through
:func:`read_image`, so a file is read the same way everywhere. The format is detected from the
content (magic bytes, DICOM preamble), never from the extension: the public sets contain PNGs
named ``.jpg``. Size limits are checked from the header before any pixel is decoded, so a
decompression bomb costs a few header bytes, and a refused file raises
:class:`~cxrguide.errors.ImageReadError` with a short reason instead of a library exception.

Normalisation (output is float32 HxW in [0, 1], bright = dense, i.e. bone white, air black):

* PNG/JPEG/other 8-bit: value / 255. 16-bit gray PNG: value / (2**bits - 1) where ``bits`` is
  the smallest of 12, 14, 16 that holds the image maximum: raw 12- and 14-bit detector values
  written into 16-bit PNGs would otherwise read 16x or 4x too dark (a PNG ``sBIT`` chunk is not
  used: by the PNG spec its samples are already scaled to the full 16 bits).
  ``ImageInfo.bit_depth`` from :func:`read_image` reports the bits used for that scaling.
  32-bit integer and float images (TIFF): min-max.
* RGB, palette: Pillow's 8-bit ``L`` (ITU-R 601 luminance, rounded), one byte per pixel before
  any float copy. RGBA/LA: alpha is composited on black (gray * alpha), so transparent regions
  read as air, not as bone.
* DICOM: stored values -> modality LUT (RescaleSlope/Intercept or Modality LUT Sequence) -> VOI
  LUT or the first window (WindowCenter/Width) when present, i.e. the contrast the acquiring site
  meant for display -> min-max to [0, 1] -> inverted for MONOCHROME1. Values are masked to
  BitsStored first so overlay bits in the high bits of a 16-bit word do not leak in. RGB DICOM:
  luminance, then min-max. A constant image min-maxes to all 0.

Real-world guards (:mod:`cxrguide.data.decode_guard`): DICOMs whose ``Modality`` is not a
radiograph are refused unless allowed (``allow_modality``); a JPEG or PNG whose data ends before
the header's last pixel is refused even behind a valid end marker; with ``target`` the image is
decoded to 8-bit luminance and block-averaged to the smallest size whose longer side is still
>= target, so memory follows the output, not the header.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrguide.data import decode_guard as guard
from cxrguide.data.transforms import resize_array, resize_mask_array
from cxrguide.errors import ImageReadError

DEFAULT_MAX_PIXELS = 64_000_000
MIN_SIDE = 64

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Pillow formats accepted besides PNG/JPEG; a whitelist, because Pillow's permissive plugins
# (TGA, ...) would "identify" random binaries.
_OTHER_PIL_FORMATS = ("TIFF", "BMP", "WEBP", "JPEG2000")
_MODE_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}
_LUMA = (0.299, 0.587, 0.114)
_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What the header says about one file (``describe()`` is the ``inspect`` line body)."""

    path: str
    format: str  # "PNG", "JPEG", "DICOM", or Pillow's format name
    width: int
    height: int
    bit_depth: int
    photometric: str  # DICOM PhotometricInterpretation, else the Pillow mode
    view: str  # DICOM ViewPosition ("PA", "AP", ...) or "" when unknown
    modality: str = ""  # DICOM Modality ("CR", "DX", ...) or "" when unknown / not DICOM

    def describe(self) -> str:
        text = f"{self.format} {self.width}x{self.height} {self.bit_depth}-bit {self.photometric}"
        text = f"{text} {self.modality}" if self.modality else text
        return f"{text} view {self.view}" if self.view else text

    @property
    def warnings(self) -> list[str]:
        """Why this readable film is unlike the training films (lateral, not a radiograph)."""
        return guard.film_warnings(self.modality, self.view)


def _fail(path: str | Path, reason: str) -> ImageReadError:
    return ImageReadError(path, reason)


def _short(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= 100 else text[:97] + "..."


def _is_truncation(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, EOFError) or any(
        k in text for k in ("truncat", "less than", "end of file", "eof", "too short", "shorter")
    )


def _read_head(path: Path) -> bytes:
    """First bytes of the file; refuses missing, non-regular and empty files."""
    try:
        if not path.exists():
            raise _fail(path, "file not found")
        if not path.is_file():
            raise _fail(path, "not a regular file")
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as err:
        raise _fail(path, f"cannot read file ({err.strerror or _short(err)})") from None
    if not head:
        raise _fail(path, "empty file")
    return head


def _check_size(
    path: Path, w: int, h: int, max_pixels: int, min_side: int, frames: int = 1
) -> None:
    """The decompression-bomb and not-a-CXR checks, from header values only."""
    pixels = w * h * max(frames, 1)
    if pixels > max_pixels:
        raise _fail(path, f"too many pixels ({w}x{h} = {pixels:,} > limit {max_pixels:,})")
    if min(w, h) < min_side:
        raise _fail(path, f"too small ({w}x{h} px, need >= {min_side})")


def _png_header(path: Path, head: bytes) -> tuple[int, int, int]:
    """(width, height, bit depth) from the IHDR chunk, which the PNG spec puts first."""
    if len(head) < 8 + 8 + 13:
        raise _fail(path, "truncated image data")
    _, ctype, width, height, depth = struct.unpack(">I4sIIB", head[8:25])
    if ctype != b"IHDR":
        raise _fail(path, "corrupt PNG data (no IHDR chunk)")
    return width, height, depth


def _jpeg_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, sample precision, SOF marker) from the first SOF segment."""
    with path.open("rb") as f:
        try:
            return guard.jpeg_frame_header(f)
        except ValueError as err:
            raise _fail(path, str(err)) from None


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A preamble-less DICOM starts with a group 0002/0008 element; random binaries rarely do."""
    if len(head) < 8 or head[:2] not in _DICOM_GROUPS:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True  # explicit VR
    (length,) = struct.unpack("<I", head[4:8])
    return length < 1024  # implicit VR: a short header value


def _open_dicom(path: Path, head: bytes, deferred: bool) -> Any:
    import pydicom
    from pydicom import uid
    from pydicom.errors import InvalidDicomError

    preamble = head[128:132] == b"DICM"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=not preamble, defer_size="64 KB" if deferred else None)
    except InvalidDicomError:
        raise _fail(path, "not an image file") from None
    except Exception as err:  # pydicom raises many types for broken headers
        if _is_truncation(err):
            raise _fail(path, "truncated image data") from None
        raise _fail(path, f"corrupt DICOM data ({_short(err)})") from None
    if not preamble and "Rows" not in ds and "SOPClassUID" not in ds and "Modality" not in ds:
        raise _fail(path, "not an image file")
    if "TransferSyntaxUID" not in ds.file_meta:
        # no file meta (bare dataset): pixel data is native; name the encoding pydicom found
        implicit, little = ds.original_encoding
        ts = uid.ImplicitVRLittleEndian if implicit else uid.ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = ts if little else uid.ExplicitVRBigEndian
    return ds


def _dicom_info(
    path: Path, ds: Any, max_pixels: int, min_side: int, modalities: frozenset[str]
) -> ImageInfo:
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise _fail(path, "DICOM has no pixel data")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    refusal = guard.modality_refusal(modality, modalities)
    if refusal:
        raise _fail(path, refusal)
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise _fail(path, "DICOM has no Rows/Columns")
    frames = int(ds.get("NumberOfFrames") or 1)
    _check_size(path, int(cols), int(rows), max_pixels, min_side, frames)
    if frames > 1:
        raise _fail(path, f"multi-frame DICOM ({frames} frames), expected one image")
    photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    if photometric.startswith("PALETTE"):
        raise _fail(path, f"unsupported DICOM photometric interpretation {photometric}")
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    return ImageInfo(str(path), "DICOM", int(cols), int(rows), bits, photometric, view, modality)


def _open_pil(path: Path, head: bytes, max_pixels: int, min_side: int) -> tuple[ImageInfo, Any]:
    """Open with Pillow (header only) after our own size check; returns an unloaded image."""
    if head.startswith(_PNG_MAGIC):
        width, height, depth = _png_header(path, head)
        _check_size(path, width, height, max_pixels, min_side)
        formats: tuple[str, ...] = ("PNG",)
    elif head.startswith(_JPEG_MAGIC):
        width, height, depth, sof = _jpeg_header(path)
        _check_size(path, width, height, max_pixels, min_side)
        short = guard.jpeg_too_short(path.stat().st_size, sof, width, height)
        if short:
            raise _fail(path, short)
        formats = ("JPEG",)
    else:
        formats, depth = _OTHER_PIL_FORMATS, 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # incl. DecompressionBombWarning: ours came first
            im = Image.open(path, formats=formats)
    except Image.DecompressionBombError as err:  # only above our limit for non-PNG/JPEG
        n, limit = (int(x) for x in re.findall(r"\d+", str(err))[:2])
        raise _fail(path, f"too many pixels ({n:,} > Pillow's limit {limit:,})") from None
    except UnidentifiedImageError:
        if formats == _OTHER_PIL_FORMATS:
            raise _fail(path, "not an image file") from None
        raise _fail(path, f"corrupt {formats[0]} data") from None
    except Exception as err:
        if _is_truncation(err):
            raise _fail(path, "truncated image data") from None
        label = formats[0] if len(formats) == 1 else "image"
        raise _fail(path, f"corrupt {label} data ({_short(err)})") from None
    fmt = formats[0] if len(formats) == 1 else str(im.format)
    width, height = im.size
    try:
        _check_size(path, width, height, max_pixels, min_side)
    except ImageReadError:
        im.close()
        raise
    bits = depth or _MODE_BITS.get(im.mode, 8)
    return ImageInfo(str(path), fmt, width, height, bits, im.mode, ""), im


def _open(
    path: str | Path, max_pixels: int, min_side: int, deferred: bool,
    allow_modality: list[str] | tuple[str, ...] | None = None,
) -> tuple[ImageInfo, Any]:  # fmt: skip
    path = Path(path)
    head = _read_head(path)
    if head.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        return _open_pil(path, head, max_pixels, min_side)
    if head[128:132] == b"DICM" or _looks_like_raw_dicom(head):
        ds = _open_dicom(path, head, deferred)
        try:
            modalities = guard.normalise_modalities(allow_modality)
            with warnings.catch_warnings():  # pydicom warns on bad values as it converts them
                warnings.simplefilter("ignore")
                return _dicom_info(path, ds, max_pixels, min_side, modalities), ds
        except ImageReadError:
            raise
        except Exception as err:  # a malformed header value (Rows "abc", bad VR, ...)
            raise _fail(path, f"corrupt DICOM data ({_short(err)})") from None
    return _open_pil(path, head, max_pixels, min_side)


def probe(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE,
    allow_modality: list[str] | tuple[str, ...] | None = None,
) -> ImageInfo:  # fmt: skip
    """Header-only look at a file: format, size, depth, view; refuses what cannot be used."""
    info, handle = _open(path, max_pixels, min_side, deferred=True, allow_modality=allow_modality)
    if isinstance(handle, Image.Image):
        handle.close()
    return info


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(arr)), float(np.max(arr))
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _dicom_pixels(ds: Any, info: ImageInfo, target: int | None = None) -> np.ndarray:
    """Stored values -> display values -> [0, 1]; block-averaged to ``target`` (see the module)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    factor = guard.reduce_factor(info.width, info.height, target)
    arr = ds.pixel_array
    if arr.ndim == 3:  # RGB / YBR (pydicom converts YBR to RGB)
        lum = arr[..., 0] * np.float32(_LUMA[0])
        lum += arr[..., 1] * np.float32(_LUMA[1])
        lum += arr[..., 2] * np.float32(_LUMA[2])
        del arr
        return _minmax(guard.block_mean(lum, factor))
    bits = int(ds.get("BitsStored") or 0)
    if arr.dtype.kind == "u" and 0 < bits < arr.dtype.itemsize * 8:
        arr = arr & np.asarray((1 << bits) - 1, dtype=arr.dtype)
    if factor > 1 and "ModalityLUTSequence" not in ds and "VOILUTSequence" not in ds:
        arr = guard.block_mean(arr, factor)  # linear LUTs + window: shrink first, in float32
        factor = 1
    arr = apply_modality_lut(arr, ds)
    with contextlib.suppress(ValueError, TypeError, IndexError, KeyError):
        arr = apply_voi_lut(arr, ds)  # a malformed window is ignored: the full range is used
    gray = _minmax(guard.block_mean(np.asarray(arr), factor).astype(np.float32, copy=False))
    if info.photometric == "MONOCHROME1" and np.ptp(gray) > 0:
        gray = 1.0 - gray
    return gray


def _dicom_decode_reason(ds: Any, err: BaseException) -> str:
    """A DICOM codec failure named by transfer syntax and the first decoder's own words."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = lines[1] if len(lines) > 1 and lines[0].startswith("Unable to decode") else _short(err)
    syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "") or "unknown syntax"
    text = f"cannot decode DICOM {syntax} pixel data ({detail})"
    return text if len(text) <= 160 else text[:157] + "..."


def _shape_fits(shape: tuple[int, ...], info: ImageInfo, target: int | None) -> bool:
    """The header's size, or (reduced) its aspect with the longer side >= target."""
    if guard.reduce_factor(info.width, info.height, target) == 1:
        return shape == (info.height, info.width)
    h, w = shape
    aspect_error = abs(h * info.width - w * info.height) / (info.width * info.height)
    return max(h, w) >= min(target or 0, max(info.width, info.height)) and aspect_error < 0.05


def read_image(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
    *,
    allow_modality: list[str] | tuple[str, ...] | None = None,
    target: int | None = None,
) -> tuple[np.ndarray, ImageInfo]:
    """Decode any supported CXR file to float32 HxW in [0, 1] (bright = dense) and its info.

    ``allow_modality``: DICOM modalities to read besides the radiographs (``["all"]``: any).
    ``target``: the caller only needs a longer side of this many pixels; the image comes back
    block-averaged by the largest integer factor that keeps it (``info`` keeps the file's size).
    """
    info, handle = _open(path, max_pixels, min_side, deferred=False, allow_modality=allow_modality)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(handle, Image.Image):
                if info.format == "PNG":
                    missing = guard.png_missing_rows(Path(info.path))
                    if missing:
                        raise _fail(info.path, missing)
                gray, bits = guard.pil_gray(handle, info.bit_depth, target, Path(info.path))
                if bits != info.bit_depth:
                    info = dataclasses.replace(info, bit_depth=bits)
            else:
                refusal = guard.dicom_jpeg_refusal(handle)  # the JPEG checks, on the frame
                if refusal:
                    raise _fail(info.path, refusal)
                gray = _dicom_pixels(handle, info, target)
    except ImageReadError:
        raise
    except guard.DecodeRefusal as err:
        raise _fail(info.path, str(err)) from None
    except MemoryError:
        raise _fail(info.path, "not enough memory to decode") from None
    except Exception as err:  # decoder errors come in many types (OSError, ValueError, ...)
        if _is_truncation(err):
            raise _fail(info.path, "truncated image data") from None
        if info.format == "DICOM":
            raise _fail(info.path, _dicom_decode_reason(handle, err)) from None
        raise _fail(info.path, f"cannot decode {info.format} data ({_short(err)})") from None
    finally:
        if isinstance(handle, Image.Image):
            handle.close()
    if not _shape_fits(gray.shape, info, target):
        raise _fail(info.path, f"decoded shape {gray.shape} does not match the header")
    return np.ascontiguousarray(gray, dtype=np.float32), info


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float (or bool) -> uint8 0..255, rounded; uint8 passes through unchanged."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    if img.dtype.kind != "f":
        raise ValueError(f"to_uint8 expects float in [0, 1], bool or uint8, got {img.dtype}")
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def fit_square(img: np.ndarray, size: int, *, mask: bool = False) -> np.ndarray:
    """Letterbox to a square (shorter side padded symmetrically with 0), then resize to size.

    Padding instead of stretching keeps the anatomy's proportions (a stretched chest changes
    heart/lung ratios the classifier may learn), and padding with 0 (black, air) adds no
    structure. The resize is the project's one rule (:mod:`cxrguide.data.transforms`): images
    area when shrinking, bilinear when enlarging; binary masks (``mask=True``) the same, then
    a majority vote (>= 0.5). The dtype is kept; integer images are rounded and clipped.
    """
    if img.ndim not in (2, 3) or min(img.shape[:2]) < 1:
        raise ValueError(f"fit_square expects a non-empty HxW or HxWxC array, got {img.shape}")
    if size < 1:
        raise ValueError(f"fit_square: size must be >= 1, got {size}")
    h, w = img.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pad = [(top, side - h - top), (left, side - w - left)] + [(0, 0)] * (img.ndim - 2)
    square = np.pad(img, pad, mode="constant", constant_values=0)
    if side == size:
        return square
    return resize_mask_array(square, size) if mask else resize_array(square, size)


def letterbox(gray: np.ndarray, size: int) -> np.ndarray:
    """A decoded film -> the model's ``(size, size)`` float32 input in [0, 1], 8-bit levels
    (the same square and levels as the prepared image cache)."""
    return to_uint8(fit_square(gray, size)).astype(np.float32) / 255.0


def unfit_square(square: np.ndarray, height: int, width: int, *, mask: bool = False) -> np.ndarray:
    """The inverse of :func:`fit_square`: a ``(S, S)`` array made from a ``height x width`` film
    back in the film's own geometry (the square enlarged or shrunk by the same resize rule,
    then the letterbox padding cut away), e.g. a Grad-CAM map drawn over the original film.

    Done as one ``(height, S) @ (S, S) @ (S, width)`` product of the rule's weights, so memory
    follows the film, never the padded square. ``mask=True``: majority vote (>= 0.5).
    """
    from cxrguide.data.transforms import sparse_weights

    if square.ndim != 2 or square.shape[0] != square.shape[1] or square.shape[0] < 1:
        raise ValueError(f"unfit_square expects a non-empty square 2-D array, got {square.shape}")
    if min(height, width) < 1:
        raise ValueError(f"unfit_square: height and width must be >= 1, got {height}x{width}")
    size, side = square.shape[0], max(height, width)
    top, left = (side - height) // 2, (side - width) // 2  # fit_square's padding
    rows = sparse_weights(size, side)[top : top + height]  # (height, S)
    cols = sparse_weights(size, side)[left : left + width]  # (width, S)
    out = np.asarray(cols @ np.asarray(rows @ square.astype(np.float64)).T).T
    if mask:
        return out >= 0.5
    if square.dtype.kind in "ui":
        limits = np.iinfo(square.dtype)
        return np.clip(np.round(out), limits.min, limits.max).astype(square.dtype)
    return out.astype(square.dtype if square.dtype.kind == "f" else np.float32)
