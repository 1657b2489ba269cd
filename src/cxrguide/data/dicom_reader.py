"""DICOM films -> :class:`~cxrguide.data.image_info.ImageInfo` and gray [0, 1].

Header first (:func:`open_dicom`, :func:`dicom_info`): pixel data present (a file cut inside its
pixel data is ``truncated``, not "no pixel data"), the radiograph gate and FOR PROCESSING
(:mod:`cxrguide.data.film_flags`), the size limits, then the compressed frame's own header
(:mod:`cxrguide.data.frame_headers`). Pixels (:func:`dicom_pixels`): values masked to
BitsStored (overlay bits in the high bits of a 16-bit word stay out), then the one intensity
rule (:mod:`cxrguide.data.intensity`): rescale, padding, window / VOI LUT, else 8-bit / 255,
else the valid range, MONOCHROME1 inverted, padding to 0. RGB / YBR: luminance first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from cxrguide.data import film_flags, intensity
from cxrguide.data.decode_guard import Deadline, dicom_jpeg_refusal, reduce_factor
from cxrguide.data.frame_headers import dicom_frame_refusal
from cxrguide.data.image_info import DicomRef, ImageInfo, check_size, fail, is_truncation, short
from cxrguide.errors import ImageReadError

_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
_LUMA = (0.299, 0.587, 0.114)
_DEFLATED = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def looks_like_raw_dicom(head: bytes) -> bool:
    """A preamble-less DICOM starts with a group 0002/0008 element; random binaries rarely do."""
    if len(head) < 8 or head[:2] not in _DICOM_GROUPS:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True  # explicit VR
    (length,) = struct.unpack("<I", head[4:8])
    return length < 1024  # implicit VR: a short header value


def _deflate_refusal(path: Path, head: bytes, limit: int) -> str | None:
    """A Deflated Explicit VR file is inflated whole by pydicom: refuse one whose dataset
    inflates past ``limit`` bytes (counted 64 KiB at a time, nothing kept)."""
    if _DEFLATED not in head[:4096] or head[128:132] != b"DICM":
        return None
    (meta_length,) = struct.unpack("<I", head[140:144])  # (0002,0000) UL, right after DICM
    inflater, produced = zlib.decompressobj(-15), 0
    with path.open("rb") as fh:
        fh.seek(144 + meta_length)
        while chunk := fh.read(1 << 16):
            while chunk and not inflater.eof:
                try:
                    produced += len(inflater.decompress(chunk, 1 << 16))
                except zlib.error:
                    return "corrupt DICOM data (bad deflated dataset)"
                if produced > limit:
                    return f"deflated DICOM dataset inflates past {limit:,} bytes: refused"
                chunk = inflater.unconsumed_tail
    return None


def open_dicom(path: Path, head: bytes, deferred: bool, max_pixels: int = 64_000_000) -> Any:
    preamble = head[128:132] == b"DICM"
    deflated = _deflate_refusal(path, head, 8 * max_pixels + (16 << 20))
    if deflated:
        raise fail(path, deflated)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=not preamble, defer_size="64 KB" if deferred else None)
    except InvalidDicomError:
        raise fail(path, "not an image file") from None
    except Exception as err:  # pydicom raises many types for broken headers
        if is_truncation(err):
            raise fail(path, "truncated image data") from None
        raise fail(path, f"corrupt DICOM data ({short(err)})") from None
    if not preamble and "Rows" not in ds and "SOPClassUID" not in ds and "Modality" not in ds:
        raise fail(path, "not an image file")
    if "TransferSyntaxUID" not in ds.file_meta:
        # no file meta (bare dataset): pixel data is native; name the encoding pydicom found
        implicit, little = ds.original_encoding
        ts = uid.ImplicitVRLittleEndian if implicit else uid.ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = ts if little else uid.ExplicitVRBigEndian
    return ds


def _has_pixel_tag(path: Path) -> bool:
    """Does the file hold a Pixel Data tag that pydicom dropped (it stops at a cut element)?"""
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return mm.rfind(_PIXEL_DATA_TAG) >= 0
    except (OSError, ValueError):
        return False


def _compressed_bytes(ds: Any) -> int | None:
    elem = ds.get("PixelData") if "PixelData" in ds else None
    if elem is None or not ds.file_meta.TransferSyntaxUID.is_compressed:
        return None
    value = ds.PixelData
    return len(value) if isinstance(value, bytes | bytearray) else None


def dicom_info(
    path: Path,
    ds: Any,
    max_pixels: int,
    min_side: int,
    modalities: frozenset[str],
    allow_for_processing: bool,
) -> ImageInfo:
    """The header's facts and warnings, or a refusal (see the module docstring)."""
    if not any(tag in ds for tag in _PIXEL_TAGS):
        if _has_pixel_tag(path):
            raise fail(path, "truncated image data (the file ends inside its pixel data)")
        raise fail(path, "DICOM has no pixel data")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    refusal = film_flags.modality_refusal(modality, modalities, str(ds.get("SOPClassUID", "")))
    refusal = refusal or film_flags.for_processing_refusal(ds, allow_for_processing)
    if refusal:
        raise fail(path, refusal.reason, refusal.remedy)
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise fail(path, "DICOM has no Rows/Columns")
    frames = int(ds.get("NumberOfFrames") or 1)
    check_size(path, int(cols), int(rows), max_pixels, min_side, frames)
    if frames > 1:
        raise fail(path, f"multi-frame DICOM ({frames} frames), expected one image")
    photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    if photometric.startswith("PALETTE"):
        raise fail(path, f"unsupported DICOM photometric interpretation {photometric}")
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    flags = film_flags.dicom_warnings(ds, modality, _compressed_bytes(ds))
    return ImageInfo(
        str(path),
        "DICOM",
        int(cols),
        int(rows),
        bits,
        photometric,
        view,
        modality,
        flags=tuple(flags),
        dicom=DicomRef.of(ds),
    )


def _padding(ds: Any, bits: int) -> intensity.Band | None:
    """Stored band -> padded pixels (PixelPaddingValue .. PixelPaddingRangeLimit)."""
    value = ds.get("PixelPaddingValue")
    if value is None or isinstance(value, bytes | list):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    lo, hi = (int(value), int(value)) if limit is None else sorted((int(value), int(limit)))
    if bits and int(ds.get("PixelRepresentation") or 0) == 0:
        lo, hi = lo & ((1 << bits) - 1), hi & ((1 << bits) - 1)  # as the masked stored values
    return (lambda b: b == lo) if lo == hi else (lambda b: (b >= lo) & (b <= hi))


def _display(ds: Any) -> intensity.Band | None:
    """The file's own display transform to [0, 1]: VOI LUT Sequence, else the first window."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        with contextlib.suppress(AttributeError, KeyError, ValueError, TypeError, IndexError):
            descriptor = [int(v) for v in item.LUTDescriptor]
            data = item.LUTData
            if isinstance(data, bytes):
                dtype = "<u1" if descriptor[2] <= 8 and len(data) == descriptor[0] else "<u2"
                data = np.frombuffer(data, dtype=dtype)
            return intensity.lut(descriptor, np.atleast_1d(np.asarray(data)))
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    with contextlib.suppress(ValueError, TypeError, IndexError):
        c = float(center[0] if not isinstance(center, int | float | str) else center)
        w = float(width[0] if not isinstance(width, int | float | str) else width)
        return intensity.window(c, w, str(ds.get("VOILUTFunction", "") or "LINEAR"))
    return None  # a malformed window is ignored: the valid range is used


def dicom_rule(ds: Any, photometric: str, rgb: bool) -> intensity.Rule:
    """The intensity rule's steps for this file (see :mod:`cxrguide.data.intensity`)."""

    bits = int(ds.get("BitsStored") or 0)
    if rgb:

        def luminance(b: np.ndarray) -> np.ndarray:
            lum = b[..., 0] * np.float32(_LUMA[0])
            lum += b[..., 1] * np.float32(_LUMA[1])
            lum += b[..., 2] * np.float32(_LUMA[2])
            return lum

        return intensity.Rule(modality=luminance, eight_bit=0 < bits <= 8)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    identity = (
        "ModalityLUTSequence" not in ds
        and float(slope if slope is not None else 1) == 1
        and float(intercept if intercept is not None else 0) == 0
    )
    modality = None if identity else (lambda b: apply_modality_lut(b, ds))
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    return intensity.Rule(
        modality=modality,
        padding=_padding(ds, bits),
        display=_display(ds),
        eight_bit=identity and not signed and 0 < bits <= 8,
        invert=photometric == "MONOCHROME1",
    )


def dicom_pixels(
    ds: Any,
    info: ImageInfo,
    target: int | None,
    check=None,  # noqa: ANN001
    square: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Stored values -> [0, 1] by the rule, block-averaged to ``target`` (and the letterboxed
    ``square``, see :func:`cxrguide.data.intensity.normalise`); and the rule's name."""
    factor = reduce_factor(info.width, info.height, target)
    arr = ds.pixel_array
    if check:
        check()
    rgb = arr.ndim == 3  # RGB / YBR (pydicom converts YBR to RGB)
    bits = int(ds.get("BitsStored") or 0)
    if not rgb and arr.dtype.kind == "u" and 0 < bits < arr.dtype.itemsize * 8:
        arr = arr & np.asarray((1 << bits) - 1, dtype=arr.dtype)
    rule = dicom_rule(ds, info.photometric, rgb)
    return (*intensity.normalise(arr, rule, factor, check, square), rule.name)


def decode_reason(ds: Any, err: BaseException) -> str:
    """A DICOM codec failure named by transfer syntax and the first decoder's own words."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = lines[1] if len(lines) > 1 and lines[0].startswith("Unable to decode") else short(err)
    syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "") or "unknown syntax"
    text = f"cannot decode DICOM {syntax} pixel data ({detail})"
    return text if len(text) <= 160 else text[:157] + "..."


def open_film(
    path: Path,
    head: bytes,
    max_pixels: int,
    min_side: int,
    deferred: bool,
    allow_modality: list[str] | tuple[str, ...] | None,
    allow_for_processing: bool,
) -> tuple[ImageInfo, Any]:
    """A DICOM file's info (refused unless a usable radiograph) and its dataset."""
    ds = open_dicom(path, head, deferred, max_pixels)
    try:
        modalities = film_flags.normalise_modalities(allow_modality)
        with warnings.catch_warnings():  # pydicom warns on bad values as it converts them
            warnings.simplefilter("ignore")
            info = dicom_info(path, ds, max_pixels, min_side, modalities, allow_for_processing)
            return info, ds
    except ImageReadError:
        raise
    except Exception as err:  # a malformed header value (Rows "abc", bad VR, ...)
        raise fail(path, f"corrupt DICOM data ({short(err)})") from None


def decode_film(
    ds: Any, info: ImageInfo, target: int | None, deadline: Deadline, square: int | None
) -> tuple[np.ndarray, np.ndarray | None, ImageInfo]:
    """A DICOM's gray pixels (the frame's own header and data checked before any codec runs),
    the letterboxed square when asked for, and the info with its intensity rule."""
    refusal = dicom_frame_refusal(ds) or dicom_jpeg_refusal(ds)
    if refusal:
        raise fail(Path(info.path), refusal)
    deadline.check()
    gray, box, rule = dicom_pixels(ds, info, target, deadline.check, square)
    return gray, box, dataclasses.replace(info, intensity=rule)
