"""The square the model sees: a film letterboxed (padded to a square with 0, then resized by the
one resize rule) and back (:func:`unfit_square`), the :class:`Letterbox` geometry between the
two, and :func:`to_uint8` (the 8-bit levels of the prepared image cache). Re-exported by
:mod:`cxrguide.data.imaging`."""

from __future__ import annotations

import dataclasses

import numpy as np

from cxrguide.data.image_info import ImageInfo
from cxrguide.data.transforms import resize_array, resize_mask_array, sparse_weights


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """Where a ``height x width`` film sits in the model's ``size`` square (film pixels).

    The film is centred in a square of side ``max(height, width)`` (``top``/``left`` rows and
    columns of padding), which is scaled by ``scale = size / side``. A model pixel (y, x) is the
    film pixel ``((y + 0.5) / scale - 0.5 - top, (x + 0.5) / scale - 0.5 - left)``; with a
    block-averaged decode (``target``) this holds to within one model pixel.
    """

    size: int
    height: int
    width: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def top(self) -> int:
        return (self.side - self.height) // 2

    @property
    def left(self) -> int:
        return (self.side - self.width) // 2

    @property
    def scale(self) -> float:
        return self.size / self.side

    @classmethod
    def of(cls, info: ImageInfo, size: int) -> Letterbox:
        return cls(size, info.height, info.width)


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
