"""Checks and decoders that keep :mod:`cxrguide.data.imaging` honest on real-world files.

(The radiograph gate and warning codes: :mod:`cxrguide.data.film_flags`; compressed frame
headers: :mod:`cxrguide.data.frame_headers`; the intensity rule: :mod:`cxrguide.data.intensity`.)

* **Missing data behind a valid end marker.** Pillow raises on a stream that simply stops
  (``LOAD_TRUNCATED_IMAGES`` stays off), but a file whose header promises more pixels than its
  data holds, closed by a forged end marker, decodes "fine": libjpeg fills every block after the
  data with zero coefficients, i.e. exactly mid-gray 128, and Pillow's PNG decoder leaves the
  rows after an early end of the zlib stream at 0. JPEG: :func:`jpeg_too_short` refuses a file
  smaller than the least a Huffman-coded JPEG of that size can be (1 bit per 8x8 luma block)
  before anything is decoded; :func:`jpeg_filler_fraction` measures the exact-128 tail after
  decoding and :func:`filler_confirmed` asks a second decoder whether that tail is real. PNG:
  :func:`png_data_refusal` inflates the IDAT stream with bounded memory and
  compares its length with what the header needs (black rows are common on real films, so the
  decoded zeros cannot tell); it stops once the rows are complete and refuses more than a little
  data beyond them (a 2 MB "bomb" of zeros behind a 256x256 header inflated for 4.6 s of CPU).
  DICOM: :func:`dicom_jpeg_refusal` runs the JPEG checks on an
  encapsulated Huffman JPEG frame before pydicom decodes it (its decoders fill a cut frame too).
* **Bounded memory.** :func:`pil_gray` decodes straight to 8-bit luminance (JPEG: ``draft``, the
  DCT-domain 1/2, 1/4, 1/8 scaling) and block-averages down to the side the caller needs
  (:func:`block_mean`, float32, no full-size float copy): a 39 KB palette PNG that decodes to
  6300x6300 costs its 40 MB 8-bit plane, not the ~3 GB of float64 RGB it used to.
* **A deadline.** :class:`Deadline` is checked between the steps of a decode (every 64 KiB of
  PNG data, every band of the intensity rule, after each library call): past it the file is
  refused (``decode_timeout_s``). A library decoder (Pillow, a DICOM codec) cannot be stopped
  mid-call, but the header checks bound what it is given (``max_pixels``).
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.encaps import generate_frames

from cxrguide.data.frame_headers import jpeg_frame_header
from cxrguide.data.intensity import Rule, normalise
from cxrguide.errors import Remedy

FILLER_LIMIT = 0.01  # refuse a JPEG whose last 1 % (or more) of pixels is decoder filler
_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive (Huffman)
# DICOM transfer syntaxes whose frames are 8/12-bit Huffman JPEG (baseline, extended)
_DICOM_HUFFMAN_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


class DecodeRefusal(Exception):
    """Decoded, but the pixels show the file is not what its header says (the message: why)."""

    remedy: Remedy | None = None


class DecodeTimeout(DecodeRefusal):
    """The decode ran past its deadline."""

    remedy = Remedy("decode_timeout_s", "SECONDS", "with more seconds to allow it")


class Deadline:
    """A time budget for one decode (None: no limit); :meth:`check` raises past it."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds if seconds else None

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise DecodeTimeout(
                f"decoding took longer than {self.seconds:g} s (the decode deadline)"
            )


# --- missing data ------------------------------------------------------------------------------
def jpeg_too_short(
    n_bytes: int, sof: int, width: int, height: int, holder: str = "file"
) -> str | None:
    """A refusal when ``n_bytes`` cannot hold a Huffman-coded image of the header's size.

    Every 8x8 luma block needs at least one bit of entropy-coded data (a 1-bit DC code; the
    progressive DC scan alone needs that much), so ``blocks / 8`` bytes is a hard floor.
    Arithmetic-coded and lossless JPEGs are not checked here.
    """
    if sof not in _HUFFMAN_SOF:
        return None
    floor = -(-width // 8) * -(-height // 8) // 8
    if n_bytes >= floor:
        return None
    return (
        f"truncated image data (header says {width}x{height}, which needs at least "
        f"{floor:,} bytes; the {holder} has {n_bytes:,})"
    )


def jpeg_filler_fraction(gray: np.ndarray) -> float:
    """Share of pixels, counted back from the last, that are libjpeg's exact-128 filler."""
    flat = gray.reshape(-1)
    if flat.size == 0 or flat[-1] != 128:
        return 0.0
    not_filler = np.flatnonzero(flat != 128)
    last = int(not_filler[-1]) if not_filler.size else -1
    return (flat.size - 1 - last) / flat.size


def filler_confirmed(source: Path | bytes, gray: np.ndarray, filler: float) -> bool:
    """Does a second decoder (libjpeg, from pylibjpeg-libjpeg) disagree on the 128 tail?

    A real flat mid-gray region decodes to exactly 128 in every decoder; libjpeg-turbo's filler
    for missing data is 128 too, but Thomas Richter's libjpeg fills differently, so the two
    agree on real content and disagree on missing data. ``source``: the JPEG file or stream;
    ``gray`` is Pillow's output (maybe at draft scale). Without the second decoder the filler is
    taken as missing data.
    """
    try:
        from libjpeg import decode

        data = source if isinstance(source, bytes) else source.read_bytes()
        other = np.asarray(decode(data))
    except Exception:  # not installed, or it cannot read the file either
        return True
    if other.ndim == 3:
        other = other.mean(axis=2)
    if gray.shape == other.shape[:2]:
        tail = other.reshape(-1)[-round(filler * gray.size) :]
    else:  # draft scale: compare the rows that are wholly filler in Pillow's output
        rows = int(np.argmax((gray != 128).any(axis=1)[::-1]))  # wholly-128 rows at the bottom
        tail = other[-max(1, rows * other.shape[0] // gray.shape[0]) :]
    return bool(np.abs(tail.astype(np.float32) - 128).max() > 1)


def _png_raw_size(width: int, height: int, depth: int, ctype: int, interlaced: bool) -> int:
    """Bytes the inflated IDAT stream must hold: filter byte + packed samples, per row (pass)."""
    bits = depth * _PNG_CHANNELS.get(ctype, 1)
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + -(-(w * bits) // 8))
    return total


def png_data_refusal(path: Path, check: Callable[[], None] | None = None) -> str | None:
    """A refusal when the PNG's image data ends before the header's last row, or carries much
    more than the rows need, else None.

    Streams the file and inflates 64 KiB at a time, keeping only the count, and stops as soon as
    the output passes what the header needs (plus 1 % slack): a bomb of zeros behind the rows
    costs a few milliseconds, not its inflated size. ``check`` runs after each step (deadline).
    """
    inflater, produced, need, header = zlib.decompressobj(), 0, None, None
    with path.open("rb") as fh:
        fh.seek(8)
        while not inflater.eof:
            head = fh.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IHDR" and header is None:
                header = struct.unpack(">IIBBBBB", fh.read(13)[:13].ljust(13, b"\0"))
                width, height, depth, ctype, _, _, interlace = header
                need = _png_raw_size(width, height, depth, ctype, interlace == 1)
                fh.seek(length - 13 + 4, 1)
            elif kind == b"IDAT" and need is not None:
                left = length
                while left and not inflater.eof:
                    data = fh.read(min(left, 1 << 16))
                    if not data:
                        break
                    left -= len(data)
                    while data and not inflater.eof:
                        try:
                            produced += len(inflater.decompress(data, 1 << 16))
                        except zlib.error:
                            return "corrupt PNG data (bad compressed stream)"
                        data = inflater.unconsumed_tail
                        if produced > need + need // 100 + 1024:
                            return (
                                f"PNG holds more image data than its {width}x{height} header "
                                f"needs (over {produced:,} bytes inflated for {need:,}): refused"
                            )
                    if check:
                        check()
                fh.seek(left + 4, 1)
            elif kind == b"IEND":
                break
            else:
                fh.seek(length + 4, 1)
    if need is None or produced >= need:
        return None  # no header: Pillow reports it
    return (
        f"truncated image data (header says {width}x{height}; the data ends after "
        f"{100 * produced / max(need, 1):.1f} % of it)"
    )


def jpeg_stream_refusal(data: bytes) -> str | None:
    """The JPEG file checks on an in-memory stream (a DICOM frame): byte floor, then filler.

    8-bit streams are decoded by Pillow at 1/8 scale (DC only, cheap); a 128 tail there is
    confirmed with the second decoder (:func:`filler_confirmed`) on the whole stream.
    """
    try:
        width, height, precision, sof = jpeg_frame_header(io.BytesIO(data))
    except ValueError as err:
        return str(err)
    short = jpeg_too_short(len(data), sof, width, height, holder="frame")
    if short or precision != 8 or sof not in _HUFFMAN_SOF:
        return short
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            im.draft("L", (-(-width // 8), -(-height // 8)))
            gray = np.asarray(im.convert("L"))
    except OSError as err:
        if "truncated" in str(err).lower():
            return "truncated image data"
        return None  # the DICOM decoder gives its own reason
    filler = jpeg_filler_fraction(gray)
    if filler >= FILLER_LIMIT and filler_confirmed(data, gray, filler):
        return (
            f"truncated image data (the last {100 * filler:.1f} % of the pixels are the "
            "decoder's filler: the JPEG data ends early)"
        )
    return None


def dicom_jpeg_refusal(ds: Any) -> str | None:
    """:func:`jpeg_stream_refusal` on a DICOM's encapsulated Huffman JPEG frame, else None.

    pydicom hands the frame to a decoder that, like any JPEG decoder, fills missing data behind
    a forged end marker instead of failing, so the frame gets the checks a JPEG file gets.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or str(meta.get("TransferSyntaxUID", "")) not in _DICOM_HUFFMAN_JPEG:
        return None

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except (StopIteration, ValueError, KeyError, AttributeError) as err:
        return f"corrupt encapsulated pixel data ({err or type(err).__name__})"
    refusal = jpeg_stream_refusal(frame)
    return f"DICOM JPEG frame: {refusal}" if refusal else None


# --- bounded decoding --------------------------------------------------------------------------
def reduce_factor(width: int, height: int, target: int | None) -> int:
    """Largest integer shrink that keeps the longer side >= ``target`` (1: keep as is)."""
    if not target:
        return 1
    return max(1, max(width, height) // target)


def pil_gray(
    im: Image.Image,
    bit_depth: int,
    target: int | None,
    path: Path | None = None,
    check: Callable[[], None] | None = None,
    square: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load ``im`` (unloaded, from ``Image.open``) as float32 gray in [0, 1] (and, with
    ``square``, the letterboxed square of :func:`cxrguide.data.intensity.normalise`).

    8-bit and colour images become Pillow ``L`` (ITU-R 601 luminance), alpha composited on black
    (transparent reads as air), then / 255; deeper images (16-bit, 32-bit, float) go by their
    range (:mod:`cxrguide.data.intensity`). With a ``target`` side the result is block-averaged
    down to the smallest size whose longer side is still >= target (JPEG decodes at that scale
    directly). ``path``: the file, for the JPEG filler check (:func:`filler_confirmed`);
    ``check``: the deadline, run after the library decode and between bands.
    """
    width, height = im.size
    is_jpeg = im.format == "JPEG"
    factor = reduce_factor(width, height, target)
    if is_jpeg and factor > 1 and im.mode in ("L", "RGB", "YCbCr"):
        im.draft("L", (-(-width // factor), -(-height // factor)))
        factor = reduce_factor(*im.size, target)
    im.load()
    if check:
        check()
    source, mode = im, im.mode
    if mode in ("P", "PA"):
        mode = "LA" if mode == "PA" or "transparency" in im.info else "L"
        im = im.convert(mode)
    elif mode in ("RGBA", "La"):
        im, mode = im.convert("LA"), "LA"
    elif mode == "1" or mode not in ("L", "LA", "I", "F") and not mode.startswith("I;16"):
        im, mode = im.convert("L"), "L"  # RGB, CMYK, YCbCr, LAB...
    if im is not source:
        source.close()  # frees the decoded original now (the caller's close is then a no-op)
    if mode == "LA":  # 8-bit: (gray * alpha / 255) / 255
        plane, alpha = (np.asarray(band) for band in im.split())
        composite = plane.astype(np.uint16) * alpha  # <= 255 * 255, fits
        rule = Rule(modality=lambda b: b / np.float32(255), eight_bit=True)
        return normalise(composite, rule, factor, check, square)
    arr = np.asarray(im)
    im.close()
    if is_jpeg and mode == "L" and path is not None:
        filler = jpeg_filler_fraction(arr)
        if filler >= FILLER_LIMIT and filler_confirmed(path, arr, filler):
            raise DecodeRefusal(
                f"truncated image data (the last {100 * filler:.1f} % of the pixels are the "
                "decoder's filler: the JPEG data ends early)"
            )
    return normalise(arr, Rule(eight_bit=mode == "L"), factor, check, square)
