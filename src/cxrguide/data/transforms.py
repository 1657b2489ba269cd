"""The one resize rule for images and masks, in numpy and torch (same numbers, both ways).

Images (and anything with continuous values: probability maps, CAMs), per axis:

* shrinking -> **area**: each output pixel is the mean of the input pixels its footprint
  touches (torch's ``mode="area"``, i.e. adaptive average pooling: window
  ``[floor(i*n/m), ceil((i+1)*n/m))``). Antialiased, no ringing, no overshoot.
* enlarging -> **bilinear** (half-pixel centres, ``align_corners=False``, edges clamped):
  area would repeat pixels (blocks); bilinear has no overshoot either.
* same size -> unchanged.

The rule is separable, so a target that shrinks one axis and enlarges the other gets area on
one and bilinear on the other. A probability map upsampled back to a film (``lungs predict``
on files) is an image in this sense: bilinear there, so the thresholded mask has a smooth edge
at the film's own resolution, not the model's pixel staircase.

Masks (binary: 0 background, anything else foreground) -> **the image rule, then >= 0.5**,
i.e. each output pixel takes the majority of the input area under it (a tie counts as
foreground). Chosen over nearest because (a) nearest keeps one sample per window, so when
shrinking a thin structure survives or vanishes by the phase of the grid, and the area of a
mask is biased by up to a pixel per boundary row; the vote keeps areas (lung fraction, the
quality flags) as they are; (b) the mask boundary sits exactly where the equally resized
image's edge crosses half intensity, so image and mask stay aligned to the sub-pixel. Labels
other than foreground/background are not supported (the project has none).

The numpy variants (:func:`resize_array`, :func:`resize_mask_array`) serve ``prepare`` and
``lungs prepare`` without torch; the torch variants (:func:`resize_image`,
:func:`resize_mask`) serve datasets, prediction and ONNX scoring. ``tests/data/test_transforms``
checks that both agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

Size = int | tuple[int, int]
# A mask pixel is foreground when at least half the area under it is: a tie counts, whatever
# the float rounding of the two variants (separable float64 in numpy, 2-D float32 in torch).
MASK_VOTE = 0.5 - 1e-6


def _pair(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"resize: target size must be >= 1, got {size}")
    return int(h), int(w)


# ---------------------------------------------------------------------------------- numpy


def _resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """The rule along one axis of a float64 array."""
    n = x.shape[axis]
    if n_out == n:
        return x
    i = np.arange(n_out)
    if n_out < n:  # area: mean over [floor(i n / m), ceil((i + 1) n / m)), as torch's area
        start = (i * n) // n_out
        end = -((-(i + 1) * n) // n_out)
        cs = np.cumsum(x, axis=axis)
        cs = np.concatenate([np.zeros_like(np.take(cs, [0], axis=axis)), cs], axis=axis)
        total = np.take(cs, end, axis=axis) - np.take(cs, start, axis=axis)
        shape = [1] * x.ndim
        shape[axis] = n_out
        return total / (end - start).reshape(shape)
    src = np.maximum((i + 0.5) * (n / n_out) - 0.5, 0.0)  # bilinear, half-pixel centres
    lo = np.minimum(np.floor(src).astype(np.intp), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = n_out
    frac = (src - lo).reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def resize_array(img: np.ndarray, size: Size) -> np.ndarray:
    """HxW or HxWxC -> the image rule at ``size``; the dtype is kept (integers rounded, clipped)."""
    if img.ndim not in (2, 3) or min(img.shape[:2]) < 1:
        raise ValueError(f"resize expects a non-empty HxW or HxWxC array, got {img.shape}")
    h, w = _pair(size)
    if (h, w) == img.shape[:2]:
        return img.copy()
    out = _resize_axis(_resize_axis(img.astype(np.float64), h, 0), w, 1)
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
    import torch.nn.functional as F

    h, w = _pair(size)
    n_h, n_w = x.shape[-2:]
    if (h, w) == (n_h, n_w):
        return x
    lead = x.shape[:-2]
    y = x.reshape(-1, 1, n_h, n_w)

    def interp(t: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
        if out[0] <= t.shape[-2] and out[1] <= t.shape[-1]:
            return F.interpolate(t, size=out, mode="area")
        return F.interpolate(t, size=out, mode="bilinear", align_corners=False)

    if (h <= n_h) == (w <= n_w) or h == n_h or w == n_w:
        y = interp(y, (h, w))
    else:  # one axis shrinks, the other grows: the rule per axis (it is separable)
        y = interp(interp(y, (h, n_w)), (h, w))
    return y.reshape(*lead, h, w)


def resize_mask(mask: torch.Tensor, size: Size) -> torch.Tensor:
    """``(..., H, W)`` binary mask -> the image rule, then >= 0.5 (majority vote).

    Returns float {0, 1} in the mask's float dtype (float32 for integer masks); bool stays bool.
    """
    import torch

    fg = resize_image((mask != 0).float(), size) >= MASK_VOTE
    if mask.dtype == torch.bool:
        return fg
    return fg.to(mask.dtype if mask.is_floating_point() else torch.float32)
