"""Checks and decoders that keep :mod:`cxrguide.data.imaging` honest on real-world files.

* **Radiograph gate.** A DICOM states what made it (``Modality``): only CR, DX, DR (vendors'
  "digital radiography") and RG (digitised film) are chest radiographs; a CT, MR, US, NM, PT...
  slice decodes fine and a classifier would happily label it. :func:`modality_refusal` names the
  modality; the reader refuses it unless the caller allows it (``--allow-modality``). A DICOM
  that states no modality is accepted (nothing to go on). :func:`film_warnings` flags what is
  accepted but outside what the model saw: lateral views, allowed non-radiograph modalities.
* **Missing data behind a valid end marker.** Pillow raises on a stream that simply stops
  (``LOAD_TRUNCATED_IMAGES`` stays off), but a file whose header promises more pixels than its
  data holds, closed by a forged end marker, decodes "fine": libjpeg fills every block after the
  data with zero coefficients, i.e. exactly mid-gray 128, and Pillow's PNG decoder leaves the
  rows after an early end of the zlib stream at 0. JPEG: :func:`jpeg_too_short` refuses a file
  smaller than the least a Huffman-coded JPEG of that size can be (1 bit per 8x8 luma block)
  before anything is decoded; :func:`jpeg_filler_fraction` measures the exact-128 tail after
  decoding and :func:`filler_confirmed` asks a second decoder whether that tail is real. PNG: :func:`png_missing_rows` inflates the IDAT stream with bounded memory and
  compares its length with what the header needs (black rows are common on real films, so the
  decoded zeros cannot tell). DICOM: :func:`dicom_jpeg_refusal` runs the JPEG checks on an
  encapsulated Huffman JPEG frame before pydicom decodes it (its decoders fill a cut frame too).
* **Bounded memory.** :func:`pil_gray` decodes straight to 8-bit luminance (JPEG: ``draft``, the
  DCT-domain 1/2, 1/4, 1/8 scaling) and block-averages down to the side the caller needs
  (:func:`block_mean`, float32, no full-size float copy): a 39 KB palette PNG that decodes to
  6300x6300 costs its 40 MB 8-bit plane, not the ~3 GB of float64 RGB it used to.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG")
LATERAL_VIEWS = {"LL", "RL", "LATERAL", "LAT", "L", "R", "LLAT", "RLAT"}
FILLER_LIMIT = 0.01  # refuse a JPEG whose last 1 % (or more) of pixels is decoder filler
_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive (Huffman)
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# DICOM transfer syntaxes whose frames are 8/12-bit Huffman JPEG (baseline, extended)
_DICOM_HUFFMAN_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # fmt: skip


def normalise_modalities(allowed: list[str] | tuple[str, ...] | None) -> frozenset[str]:
    """Upper-cased modality codes a reader accepts: the radiographs plus ``allowed`` ('all')."""
    extra = {m.strip().upper() for m in allowed or () if m.strip()}
    return frozenset(RADIOGRAPH_MODALITIES) | extra


def modality_refusal(modality: str, accepted: frozenset[str]) -> str | None:
    """Why a DICOM of this ``Modality`` is not read as a chest radiograph, or None."""
    modality = modality.strip().upper()
    if not modality or modality in accepted or "ALL" in accepted:
        return None
    return (
        f"DICOM modality {modality} is not a radiograph (CR/DX/DR); "
        f"pass --allow-modality {modality} to read it anyway"
    )


def is_lateral(view: str) -> bool:
    return view.strip().upper() in LATERAL_VIEWS


def film_warnings(modality: str, view: str) -> list[str]:
    """What makes a readable film unlike the training films (frontal radiographs)."""
    notes = []
    if modality and modality.upper() not in RADIOGRAPH_MODALITIES:
        notes.append(f"modality {modality} is not a radiograph (read because it was allowed)")
    if is_lateral(view):
        notes.append(f"lateral view ({view}): the model was trained on frontal films")
    return notes


class DecodeRefusal(Exception):
    """Decoded, but the pixels show the file is not what its header says (the message: why)."""


# --- missing data ------------------------------------------------------------------------------
def jpeg_frame_header(f: BinaryIO) -> tuple[int, int, int, int]:
    """(width, height, sample precision, SOF marker) of the JPEG stream in ``f`` (at its SOI).

    Walks the marker segments to the first frame header; ``ValueError`` (the reason) when the
    stream ends first or has no frame header.
    """
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
        if marker in _SOF_MARKERS:
            sof = f.read(5)
            if len(sof) < 5:
                raise ValueError("truncated image data")
            precision, height, width = struct.unpack(">BHH", sof)
            return width, height, precision, marker
        f.seek(length - 2, 1)


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
    ``gray`` is Pillow's output (maybe at draft scale). Without the second decoder the filler is taken as missing data.
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


def png_missing_rows(path: Path) -> str | None:
    """A refusal when the PNG's image data ends before the header's last row, or None.

    Inflates in 1 MiB steps and keeps only the count, so a bomb costs time, not memory.
    """
    with path.open("rb") as fh:
        data = fh.read()
    pos, header, inflater, produced = 8, None, zlib.decompressobj(), 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR" and len(body) >= 13:
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            chunk = body
            while chunk and not inflater.eof:
                try:
                    produced += len(inflater.decompress(chunk, 1 << 20))
                except zlib.error:
                    return "corrupt PNG data (bad compressed stream)"
                chunk = inflater.unconsumed_tail
        elif kind == b"IEND":
            break
    if header is None:
        return None  # Pillow reports it
    width, height, depth, ctype, _, _, interlace = header
    need = _png_raw_size(width, height, depth, ctype, interlace == 1)
    if produced >= need:
        return None
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
    from pydicom.encaps import generate_frames

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


def block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks (edge blocks partial, as ``Image.reduce``), float32.

    Sums one band of ``factor`` rows at a time (integers exactly, in 64 bits), so the extra
    memory is one output-sized array, never a full-size float copy.
    """
    if factor <= 1:
        return arr.astype(np.float32, copy=False)
    h, w = arr.shape
    acc = np.int64 if arr.dtype.kind in "biu" else np.float64
    rows = np.empty((-(-h // factor), w), dtype=np.float64)
    for i, top in enumerate(range(0, h, factor)):
        rows[i] = arr[top : top + factor].sum(axis=0, dtype=acc)
    cells = np.add.reduceat(rows, np.arange(0, w, factor), axis=1)
    rh = np.minimum(factor, h - np.arange(0, h, factor))
    rw = np.minimum(factor, w - np.arange(0, w, factor))
    return (cells / np.outer(rh, rw)).astype(np.float32)


def pil_gray(
    im: Image.Image, bit_depth: int, target: int | None, path: Path | None = None
) -> tuple[np.ndarray, int]:
    """Load ``im`` (unloaded, from ``Image.open``) as float32 gray in [0, 1] and the bits used.

    8-bit and colour images become Pillow ``L`` (ITU-R 601 luminance), alpha composited on black
    (transparent reads as air); 16-bit gray keeps the 12/14/16-bit rule of
    :mod:`cxrguide.data.imaging`; 32-bit integer and float images are min-maxed. With a
    ``target`` side the result is block-averaged down to the smallest size whose longer side is
    still >= target (JPEG decodes at that scale directly). ``path``: the file, for the JPEG
    filler check (:func:`filler_confirmed`).
    """
    width, height = im.size
    is_jpeg = im.format == "JPEG"
    factor = reduce_factor(width, height, target)
    if is_jpeg and factor > 1 and im.mode in ("L", "RGB", "YCbCr"):
        im.draft("L", (-(-width // factor), -(-height // factor)))
        factor = reduce_factor(*im.size, target)
    im.load()
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
    if mode == "LA":
        plane, alpha = (np.asarray(band) for band in im.split())
        composite = plane.astype(np.uint16) * alpha  # <= 255 * 255, fits
        return block_mean(composite, factor) / np.float32(255 * 255), min(bit_depth, 8)
    arr = np.asarray(im)
    im.close()
    if is_jpeg and mode == "L" and path is not None:
        filler = jpeg_filler_fraction(arr)
        if filler >= FILLER_LIMIT and filler_confirmed(path, arr, filler):
            raise DecodeRefusal(
                f"truncated image data (the last {100 * filler:.1f} % of the pixels are the "
                "decoder's filler: the JPEG data ends early)"
            )
    if mode == "L":
        return block_mean(arr, factor) / np.float32(255), min(bit_depth, 8)
    if mode.startswith("I;16") or (mode == "I" and bit_depth == 16):
        vmax = int(arr.max()) if arr.size else 0
        bits = next(b for b in (12, 14, 16) if vmax < 2**b)
        return block_mean(arr, factor) / np.float32(2**bits - 1), bits
    small = block_mean(arr, factor)
    lo, hi = float(small.min()), float(small.max())
    gray = (small - lo) / (hi - lo) if hi > lo else np.zeros_like(small)
    return gray, bit_depth
