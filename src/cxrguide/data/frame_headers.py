"""What a compressed frame says about itself, read before any decoder runs.

A DICOM's Rows/Columns are only a claim: pydicom hands the encapsulated frame to a codec that
decodes whatever size the frame's *own* header declares and only then fails on the reshape. A
1 KB file whose header says 256x256 but whose JPEG 2000 codestream is 6000x6000 cost ~200 MB
before the refusal. :func:`dicom_frame_refusal` reads the frame header (JPEG SOF, JPEG-LS SOF55,
JPEG 2000 SIZ in a raw codestream or a jp2 file's ``jp2c`` box) and refuses unless it matches
Rows/Columns, SamplesPerPixel and BitsAllocated (and so the pixel limit checked on those), and
refuses a frame that stops before its end marker (a cut file: ``truncated``).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.encaps import generate_frames

# JPEG frame headers: SOF0-3, 5-7, 9-11, 13-15 and JPEG-LS SOF55 (0xF7)
SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_JPEG_SYNTAXES = {f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81)}
_J2K_SYNTAXES = {f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203)}
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@dataclass(frozen=True)
class FrameHeader:
    """Size, samples per pixel and bits per sample a compressed frame declares."""

    width: int
    height: int
    components: int
    precision: int
    codec: str  # "JPEG", "JPEG-LS", "JPEG 2000"


def jpeg_frame_header(f: BinaryIO) -> tuple[int, int, int, int]:
    """(width, height, sample precision, SOF marker) of the JPEG stream in ``f`` (at its SOI).

    Walks the marker segments to the first frame header; ``ValueError`` (the reason) when the
    stream ends first or has no frame header.
    """
    width, height, precision, marker, _ = _jpeg_sof(f)
    return width, height, precision, marker


def _jpeg_sof(f: BinaryIO) -> tuple[int, int, int, int, int]:
    f.seek(2, 1)
    while True:
        byte = f.read(1)
        if not byte:
            raise ValueError("truncated image data")
        if byte != b"\xff":
            continue  # fill/garbage between segments, as decoders tolerate
        code = f.read(1)
        while code == b"\xff":
            code = f.read(1)
        if not code:
            raise ValueError("truncated image data")
        marker = code[0]
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("corrupt JPEG data (no frame header)")
        raw = f.read(2)
        if len(raw) < 2:
            raise ValueError("truncated image data")
        (length,) = struct.unpack(">H", raw)
        if marker in SOF_MARKERS:
            sof = f.read(6)
            if len(sof) < 6:
                raise ValueError("truncated image data")
            precision, height, width, components = struct.unpack(">BHHB", sof)
            return width, height, precision, marker, components
        f.seek(length - 2, 1)


def _j2k_siz(data: bytes) -> FrameHeader:
    """The SIZ segment right after SOC (ISO 15444-1 A.5.1): image area, components, depth."""
    if len(data) < 4 + 38 + 3:
        raise ValueError("truncated image data")
    (_, _, xsiz, ysiz, x0, y0, _, _, _, _, csiz) = struct.unpack(">HHIIIIIIIIH", data[4:42])
    if csiz < 1 or len(data) < 42 + 3 * csiz:
        raise ValueError("corrupt JPEG 2000 data (bad SIZ segment)")
    precision = max((data[42 + 3 * i] & 0x7F) + 1 for i in range(csiz))
    return FrameHeader(xsiz - x0, ysiz - y0, csiz, precision, "JPEG 2000")


def _jp2_codestream(data: bytes) -> bytes:
    """The ``jp2c`` box's contents of a jp2 file (boxes: length, type, body)."""
    pos = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        head = 8
        if length == 1 and pos + 16 <= len(data):
            (length,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            head = 16
        if kind == b"jp2c":
            return data[pos + head : pos + length if length else len(data)]
        if length < head:
            break
        pos += length
    raise ValueError("corrupt JPEG 2000 data (no codestream box)")


def frame_header(data: bytes) -> FrameHeader:
    """The header of a JPEG, JPEG-LS or JPEG 2000 (codestream or jp2) stream; ``ValueError``."""
    if data.startswith(b"\xff\xd8"):
        width, height, precision, marker, components = _jpeg_sof(io.BytesIO(data))
        return FrameHeader(
            width, height, components, precision, "JPEG-LS" if marker == 0xF7 else "JPEG"
        )
    if data.startswith(_JP2_SIGNATURE):
        data = _jp2_codestream(data)
    if data.startswith(_J2K_SOC_SIZ):
        return _j2k_siz(data)
    raise ValueError("the frame is neither JPEG nor JPEG 2000 data")


def _ends_cleanly(frame: bytes) -> bool:
    """JPEG, JPEG-LS and JPEG 2000 streams end with FFD9 (EOI / EOC), maybe padded to even
    length (with 00 or FF)."""
    return frame.rstrip(b"\x00\xff")[-1:] == b"\xd9" and frame.rstrip(b"\x00\xff")[-2:-1] == b"\xff"


def dicom_frame_refusal(ds: Any) -> str | None:
    """Why the first encapsulated frame of ``ds`` must not be decoded, or None.

    Checked: its own header matches Rows/Columns, SamplesPerPixel and BitsAllocated (a codec
    allocates what the frame declares), and its last fragment ends with the end marker.
    """
    syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    if syntax not in _JPEG_SYNTAXES | _J2K_SYNTAXES:
        return None

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except StopIteration:
        return "truncated image data (the compressed frame is missing)"
    except (ValueError, KeyError, AttributeError, TypeError) as err:
        return f"corrupt encapsulated pixel data ({err or type(err).__name__})"
    try:
        head = frame_header(bytes(frame[: 1 << 16]) if syntax in _J2K_SYNTAXES else bytes(frame))
    except ValueError as err:
        return f"compressed frame: {err}"
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 16)
    if (head.width, head.height) != (cols, rows):
        return (
            f"the {head.codec} frame is {head.width}x{head.height} but the DICOM header says "
            f"{cols}x{rows} (refused before decoding)"
        )
    if head.components > samples or head.precision > max(bits, 8):
        return (
            f"the {head.codec} frame has {head.components} component(s) of {head.precision} "
            f"bits but the DICOM header says {samples} of {bits} (refused before decoding)"
        )
    if not _ends_cleanly(bytes(frame[-16:])):
        return f"truncated image data (the {head.codec} frame stops before its end marker)"
    return None
