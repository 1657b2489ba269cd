"""How ``evaluate --onnx`` feeds an external ONNX classifier: its input resolved and checked.

Layout (NCHW/NHWC), channels (1/3), size and dtype come from the graph's input shape where it
fixes them; the ``--onnx-*`` flags override or fill them in (:func:`resolve_input`).
``--onnx-classes`` names the model's output order (:func:`parse_classes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrguide.errors import CxrGuideError
from cxrguide.labels import CLASSES

LAYOUTS = ("nchw", "nhwc")
NORMALIZATIONS = ("none", "imagenet", "minus1to1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
MASK_INPUT = "lung_mask"  # the second input of a gated (Stage III) 'cxrguide export'
_CLASS_ALIASES = {
    "normal": "Normal",
    "pneumonia": "Pneumonia",
    "covid19": "COVID-19",
    "covid": "COVID-19",
}


def parse_classes(classes: str | Sequence[str]) -> tuple[str, ...]:
    """``"normal,pneumonia,COVID-19"`` -> our class names in the model's output order."""
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    out = []
    for name in names:
        key = "".join(ch for ch in name.lower() if ch.isalnum())
        if key not in _CLASS_ALIASES:
            raise CxrGuideError(
                f"--onnx-classes: unknown class {name.strip()!r} (use {', '.join(CLASSES)})"
            )
        out.append(_CLASS_ALIASES[key])
    if sorted(out) != sorted(CLASSES):
        raise CxrGuideError(
            f"--onnx-classes: need each of {', '.join(CLASSES)} once, got {','.join(names)}"
        )
    return tuple(out)


@dataclass(frozen=True)
class OnnxInput:
    """How images are fed: resolved from the graph's input shape and the user's overrides."""

    name: str
    layout: str  # nchw | nhwc
    channels: int  # 1 | 3
    height: int
    width: int
    batch: int | None  # the graph's fixed batch size; None when dynamic
    normalize: str
    dtype: str


def fixed_dim(d: Any) -> int | None:
    """A graph dimension as an int, or None when it is dynamic (a name, None, 0 or -1)."""
    return d if isinstance(d, int) and d > 0 else None


def _resolve_layout(path: Path, dims: list[int | None], layout: str | None) -> str:
    first, last = dims[1], dims[3]
    if layout is not None:
        if layout not in LAYOUTS:
            raise CxrGuideError(f"--onnx-layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
        channel = first if layout == "nchw" else last
        if channel not in (None, 1, 3):
            raise CxrGuideError(
                f"{path}: input shape {dims} has {channel} at the {layout} channel axis "
                "(need 1 or 3)"
            )
        return layout
    known_first, known_last = first in (1, 3), last in (1, 3)
    if known_first and known_last:
        raise CxrGuideError(f"{path}: input shape {dims} is ambiguous; pass --onnx-layout")
    if known_first or known_last:
        return "nchw" if known_first else "nhwc"
    if first is None:
        return "nchw"  # PyTorch's convention when nothing in the graph says otherwise
    if last is None:
        return "nhwc"
    raise CxrGuideError(f"{path}: input shape {dims} has no 1- or 3-channel axis")


def resolve_input(
    path: Path,
    name: str,
    shape: Sequence[Any],
    type_name: str,
    *,
    size: int | None,
    layout: str | None,
    channels: int | None,
    normalize: str,
    default_size: int,
) -> OnnxInput:
    """Check the graph's one input and combine what it fixes with the overrides."""
    if type_name not in _DTYPES:
        raise CxrGuideError(f"{path}: input {name!r} is {type_name}; need a float image tensor")
    if len(shape) != 4:
        raise CxrGuideError(
            f"{path}: input {name!r} has shape {list(shape)}; need a 4-D image batch"
        )
    if normalize not in NORMALIZATIONS:
        raise CxrGuideError(
            f"--onnx-normalize: {normalize!r} is not one of {', '.join(NORMALIZATIONS)}"
        )
    dims = [fixed_dim(d) for d in shape]
    layout = _resolve_layout(path, dims, layout)
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    if channels is not None:
        if channels not in (1, 3):
            raise CxrGuideError(f"--onnx-channels: {channels} is not 1 or 3")
        if c is not None and c != channels:
            raise CxrGuideError(f"{path}: the graph fixes {c} input channels, not {channels}")
    channels = c or channels or 3
    if size is not None:
        if size < 1:
            raise CxrGuideError(f"--onnx-size: {size} must be positive")
        for fixed in (h, w):
            if fixed is not None and fixed != size:
                raise CxrGuideError(f"{path}: the graph fixes input size {h}x{w}, not {size}")
    side = size or default_size
    return OnnxInput(
        name,
        layout,
        channels,
        h or side,
        w or side,
        dims[0],
        normalize,
        np.dtype(_DTYPES[type_name]).name,
    )
