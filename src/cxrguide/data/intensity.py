"""The one intensity rule: stored pixel values -> gray in [0, 1] (bright = dense), every format.

Computed on the full-resolution pixels, before any resize, so a film's contrast does not depend
on the size it is decoded at (``prepare``'s cache and ``predict``'s input agree; a min-max taken
after shrinking stretched DICOMs differently at every size). Per pixel, in this order:

1. **rescale**: the modality transform (DICOM RescaleSlope/Intercept or Modality LUT Sequence);
2. **padding masked**: DICOM PixelPaddingValue (up to PixelPaddingRangeLimit), on stored values;
3. **to [0, 1]** by the file's own display transform when it has one (DICOM VOI LUT Sequence,
   else the first WindowCenter/Width with its VOI LUT Function), else like a PNG for 8-bit data
   (value / 255), else by the range of the valid (non-padding) pixels;
4. **MONOCHROME1 inverted**;
5. padded pixels take the background value 0 (air, as the letterbox).

:func:`normalise` applies the rule in bands of rows and block-averages each band to the size the
caller needs (:func:`block_mean`), so the extra memory is one band, never a full-size float copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cxrguide.data.transforms import sparse_weights

Band = Callable[[np.ndarray], np.ndarray]
_BAND_PIXELS = 1 << 20  # ~1 M pixels per band: 4-8 MB of float temporaries


@dataclass(frozen=True)
class Rule:
    """How one image's stored values become [0, 1] (the steps of the module docstring).

    ``modality``: stored band -> float values (default: as float32); ``padding``: stored band ->
    bool mask of padded pixels; ``display``: modality values -> [0, 1] (window / VOI LUT);
    without it ``eight_bit`` divides by 255, else the valid pixels' range is used.
    """

    modality: Band | None = None
    padding: Band | None = None
    display: Band | None = None
    eight_bit: bool = False
    invert: bool = False

    @property
    def name(self) -> str:
        """Which step 3 applies ("window/VOI LUT", "8-bit", "range"), for ``inspect``."""
        return "window/VOI LUT" if self.display else "8-bit /255" if self.eight_bit else "range"


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


def _bands(h: int, w: int, factor: int) -> range:
    step = factor * max(1, _BAND_PIXELS // max(1, w * factor))
    return range(0, h, step)


def _values(rule: Rule, band: np.ndarray) -> np.ndarray:
    return (rule.modality(band) if rule.modality else band).astype(np.float32, copy=False)


def valid_range(arr: np.ndarray, rule: Rule, check: Callable[[], None] | None = None):
    """(lo, hi) of the modality values of the non-padding pixels; None when all are padding."""
    if rule.modality is None and rule.padding is None and arr.ndim == 2:
        return (float(arr.min()), float(arr.max())) if arr.size else None
    lo, hi = np.inf, -np.inf
    h, w = arr.shape[:2]
    bands = _bands(h, w, 1)
    for top in bands:
        band = arr[top : top + bands.step]
        values = _values(rule, band)
        if rule.padding is not None:
            values = values[~rule.padding(band)]
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        if check:
            check()
    return None if lo > hi else (lo, hi)


class _Square:
    """The letterbox of :func:`cxrguide.data.imaging.fit_square` (film centred in a square of
    its longer side, zeros around, then the resize rule to ``size``), accumulated band by band
    at full resolution: ``Wy[:, rows] @ band @ Wx[:, cols].T`` with the rule's sparse matrices."""

    def __init__(self, h: int, w: int, size: int) -> None:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        weights = sparse_weights(side, size).tocsc().astype(np.float32)
        self.wy = weights[:, top : top + h]
        self.wx = weights[:, left : left + w].tocsr()
        self.out = np.zeros((size, size), dtype=np.float64)

    def add(self, top: int, unit: np.ndarray) -> None:
        cols = np.asarray(self.wx @ unit.T).T  # (band rows, size), float32
        self.out += np.asarray(self.wy[:, top : top + unit.shape[0]] @ cols)


def normalise(
    arr: np.ndarray,
    rule: Rule,
    factor: int = 1,
    check: Callable[[], None] | None = None,
    square: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored values (HxW, or HxWx3 with a luminance ``modality``) -> float32 [0, 1], the rule
    applied at full resolution, then block-averaged by ``factor``; with ``square``, also the
    letterboxed ``square x square`` float32 input built from the same full-resolution pixels
    (exact: no detour through the block-averaged image). ``check`` runs between bands (the
    decode deadline)."""
    h, w = arr.shape[:2]
    scale: tuple[float, float] | None = None
    constant = False
    if rule.display is None and not rule.eight_bit:
        limits = valid_range(arr, rule, check) or (0.0, 0.0)
        constant = limits[1] <= limits[0]
        scale = (limits[0], limits[1] - limits[0] if not constant else np.inf)
    out = np.empty((-(-h // factor), -(-w // factor)), dtype=np.float32)
    sink = _Square(h, w, square) if square else None
    bands = _bands(h, w, factor)
    for top in bands:
        band = arr[top : top + bands.step]
        values = _values(rule, band)
        if rule.display is not None:
            unit = np.asarray(rule.display(values), dtype=np.float32)
        elif rule.eight_bit:
            unit = values / np.float32(255)
        else:
            unit = (values - np.float32(scale[0])) / np.float32(scale[1])
        np.clip(unit, 0.0, 1.0, out=unit)
        if rule.invert and not constant:
            unit = 1.0 - unit
        if rule.padding is not None:
            unit[rule.padding(band)] = 0.0
        out[top // factor : top // factor + -(-band.shape[0] // factor)] = block_mean(unit, factor)
        if sink is not None:
            sink.add(top, unit)
        if check:
            check()
    return out, None if sink is None else sink.out.astype(np.float32)


# --- DICOM display transforms ----------------------------------------------------------------
def window(center: float, width: float, function: str = "LINEAR") -> Band:
    """The DICOM VOI window (PS3.3 C.11.2.1.2) mapping to [0, 1] directly; ``ValueError`` when
    the width is unusable (the caller then ignores the window)."""
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError("window width must be > 0")
        return lambda v: 1.0 / (1.0 + np.exp(np.float32(-4.0 / width) * (v - np.float32(center))))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError("window width must be > 0")
        c, w = center, width
    elif function == "LINEAR":
        if width < 1:
            raise ValueError("window width must be >= 1")
        c, w = center - 0.5, width - 1.0
        if w == 0:  # a one-value window: a threshold
            return lambda v: (v > np.float32(c)).astype(np.float32)
    else:
        raise ValueError(f"unsupported VOI LUT function {function}")
    return lambda v: (v - np.float32(c)) * np.float32(1.0 / w) + np.float32(0.5)


def lut(descriptor: list[int] | tuple[int, ...], data: np.ndarray) -> Band:
    """A DICOM LUT (descriptor: entries, first mapped value, bits) to [0, 1] by its data range.

    The data range, not ``2**bits``: vendors declare 16 bits and fill 12.
    """
    first = int(descriptor[1])
    table = np.asarray(data, dtype=np.float32)
    lo, hi = float(table.min()), float(table.max())
    table = (table - lo) / (hi - lo) if hi > lo else np.zeros_like(table)
    last = len(table) - 1

    def apply(v: np.ndarray) -> np.ndarray:
        index = np.clip(np.rint(v) - first, 0, last).astype(np.intp)
        return table[index]

    return apply
