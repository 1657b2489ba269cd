"""The one resize rule for images and masks, in numpy and torch (same weights, both ways), and
the square the model sees, built with it (``fit_square``, ``letterbox``, ``Letterbox``,
``unfit_square``, ``to_uint8``; geometry lives beside the rule it depends on).

Images (and anything with continuous values: probability maps, CAMs), per axis:

* shrinking -> **area**: each output pixel is the mean of the input area under its footprint,
  edge pixels weighted by the fraction covered (OpenCV's ``INTER_AREA``; the tests check it).
  Antialiased, no ringing, no overshoot. Neither torch's ``mode="area"`` (adaptive average
  pooling: whole-pixel windows up to ``ceil(n/m) + 1`` wide, ~40% blurrier at 512 -> 224) nor
  Pillow's ``BOX``, which ``prepare`` used before (it counts a pixel whole or not at all,
  by whether its centre lies in the footprint, so at 300 -> 224 an output averages 1 or 2
  pixels: aliasing).
* enlarging -> **bilinear** (half-pixel centres, ``align_corners=False``, edges clamped):
  area would repeat pixels (blocks); bilinear has no overshoot either.
* same size -> unchanged.

Both are one weight matrix per axis (:func:`sparse_weights`, rows summing to 1): the numpy
variant applies it sparse (films of any size in ``prepare``), the torch one dense (batches on
the model's device), so the two give the same numbers up to float rounding. The rule is
separable, so a target that shrinks one axis and enlarges the other gets area on one and
bilinear on the other. A probability map upsampled back to a film (``lungs predict`` on files)
is an image in this sense: bilinear there, thresholded afterwards at the film's resolution, so
the mask edge follows the interpolated probability instead of the model's pixel staircase.

Masks (binary: 0 background, anything else foreground) -> **the image rule, then >= 0.5**,
i.e. each output pixel takes the majority of the input area under it (a tie counts as
foreground). Chosen over nearest because (a) nearest keeps one sample per window, so when
shrinking, whether a thin structure survives depends on the phase of the grid; the vote
depends on how much of it is there; (b) the mask boundary sits where the equally resized
image's edge crosses half intensity, so image and mask follow one rule and stay aligned to
the sub-pixel. On real masks the two differ little: 40 V7 lung masks letterboxed to 256 px
agree with Dice 0.9987 (min 0.9965); the lung-area fraction is off the full-resolution one by
0.0003 (vote) vs 0.0002 (nearest) on average. Labels other than foreground /
background are not supported (the project has none).

Users: ``prepare`` / ``lungs prepare`` / ``fit_square`` (numpy), the datasets, lung training
and prediction, galleries, attention metrics and ONNX scoring (torch). The augmenter's warp
(:mod:`cxrguide.data.augment`) is not a resize: it follows torchvision (bilinear image,
nearest mask on the same grid). Not resizes of images or masks, so left as they are: the lung
gate and GAIN's guide pooled to the feature map (soft weights, torch's ``area``; exact at the
backbones' integer strides, and mirrored by the ONNX export's matrices), Grad-CAM's upsampling
inside training (bilinear, which is this rule when enlarging) and the dHash thumbnail of
``data/manifest.py`` (changing it would change duplicate detection).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from cxrguide.data.image_info import ImageInfo

Size = int | tuple[int, int]
# A mask pixel is foreground when at least half the area under it is: a tie counts, whatever
# the float rounding of the two variants (float64 sparse in numpy, float32 dense in torch).
MASK_VOTE = 0.5 - 1e-6


def _pair(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"resize: target size must be >= 1, got {size}")
    return int(h), int(w)


def _weight_entries(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, weight) of the rule's ``(m, n)`` matrix taking ``n`` samples to ``m``."""
    i = np.arange(m)
    if m < n:  # exact area: overlap of input pixel [j, j+1) with output footprint [b, e)
        b, e = i[:, None] * n / m, (i[:, None] + 1) * n / m
        j = np.floor(b).astype(np.intp) + np.arange(-(-n // m) + 1)[None, :]
        w = np.clip(np.minimum(j + 1, e) - np.maximum(j, b), 0, None) * (m / n)
        keep = (j < n) & (w > 0)
        return np.broadcast_to(i[:, None], j.shape)[keep], j[keep], w[keep]
    src = np.clip((i + 0.5) * n / m - 0.5, 0, n - 1)  # bilinear, half-pixel centres, clamped
    lo = np.floor(src).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    return (
        np.concatenate([i, i]),
        np.concatenate([lo, hi]),
        np.concatenate([1 - (src - lo), src - lo]),
    )


@functools.lru_cache(maxsize=32)
def sparse_weights(n: int, m: int):  # noqa: ANN201 - scipy.sparse.csr_array, rows sum to 1
    """The rule along one axis as a sparse ``(m, n)`` matrix (duplicates summed)."""
    from scipy import sparse

    rows, cols, weights = _weight_entries(n, m)
    return sparse.csr_array((weights, (rows, cols)), shape=(m, n))


@functools.lru_cache(maxsize=16)
def _dense_weights(n: int, m: int) -> np.ndarray:
    return sparse_weights(n, m).toarray()


# ---------------------------------------------------------------------------------- numpy


def resize_array(img: np.ndarray, size: Size) -> np.ndarray:
    """HxW or HxWxC -> the image rule at ``size``; the dtype is kept (integers rounded, clipped)."""
    if img.ndim not in (2, 3) or min(img.shape[:2]) < 1:
        raise ValueError(f"resize expects a non-empty HxW or HxWxC array, got {img.shape}")
    h, w = _pair(size)
    if (h, w) == img.shape[:2]:
        return img.copy()
    x = img.astype(np.float64)
    n_h, n_w = img.shape[:2]
    rest = img.shape[2:]
    x = sparse_weights(n_h, h) @ x.reshape(n_h, -1)  # (h, W*C)
    x = x.reshape(h, n_w, -1).transpose(1, 0, 2).reshape(n_w, -1)  # (W, h*C)
    x = sparse_weights(n_w, w) @ x  # (w, h*C)
    out = x.reshape(w, h, -1).transpose(1, 0, 2).reshape(h, w, *rest)
    if img.dtype.kind in "ui":
        limits = np.iinfo(img.dtype)
        return np.clip(np.round(out), limits.min, limits.max).astype(img.dtype)
    if img.dtype == np.bool_:
        return out >= 0.5
    return out.astype(img.dtype)


def resize_mask_array(mask: np.ndarray, size: Size) -> np.ndarray:
    """A binary mask -> the image rule, then >= 0.5 (majority vote); dtype and "on" value kept."""
    on = mask.max() if mask.size and mask.dtype != np.bool_ else True
    fg = resize_array((mask != 0).astype(np.float64), size) >= MASK_VOTE
    return fg if mask.dtype == np.bool_ else np.where(fg, on, 0).astype(mask.dtype)


# ---------------------------------------------------------------------------------- torch


def resize_image(x: torch.Tensor, size: Size) -> torch.Tensor:
    """``(..., H, W)`` float -> the image rule at ``size`` (area shrinking, bilinear enlarging)."""
    import torch

    h, w = _pair(size)
    n_h, n_w = x.shape[-2:]
    if (h, w) == (n_h, n_w):
        return x
    if not x.is_floating_point():
        x = x.float()
    if n_h != h:
        x = torch.from_numpy(_dense_weights(n_h, h)).to(x.device, x.dtype) @ x
    if n_w != w:
        x = x @ torch.from_numpy(_dense_weights(n_w, w)).to(x.device, x.dtype).T
    return x


def resize_mask(mask: torch.Tensor, size: Size) -> torch.Tensor:
    """``(..., H, W)`` binary mask -> the image rule, then >= 0.5 (majority vote).

    Returns float {0, 1} in the mask's float dtype (float32 for integer masks); bool stays bool.
    """
    import torch

    fg = resize_image((mask != 0).float(), size) >= MASK_VOTE
    if mask.dtype == torch.bool:
        return fg
    return fg.to(mask.dtype if mask.is_floating_point() else torch.float32)


# The square the model sees: a film letterboxed (padded to a square with 0, then resized by the
# rule above) and back (unfit_square), the Letterbox geometry between the two, and to_uint8 (the
# 8-bit levels of the prepared image cache). Re-exported by cxrguide.data.imaging.


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
