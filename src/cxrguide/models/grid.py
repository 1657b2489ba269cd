"""Where a body's feature maps sit and how a pixel mask lands on them.

One rule for a lung mask on a feature grid (:func:`mask_to_grid`), used by the model's gates
and by the exporter, and one reading of timm's ``feature_info`` (:func:`feature_stages`), used
by the early gate and by the phantom pretraining's lesion tap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` averaging weights equal to 1-D adaptive average pooling.

    Row ``i`` averages inputs ``floor(i * n_in / n_out)`` to ``ceil((i + 1) * n_in / n_out)``,
    PyTorch's bin rule, so ``A_h @ M @ A_w.T`` equals ``F.interpolate(M, mode="area")``.
    """
    weights = torch.zeros(n_out, n_in, dtype=torch.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, math.ceil((i + 1) * n_in / n_out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def mask_to_grid(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Area-resize a ``(B, 1, H, W)`` mask to a ``(h, w)`` feature grid (soft values kept: a
    cell half inside the lungs gets 0.5).

    Average pooling when the side divides (bit-identical to ``F.interpolate(mode="area")``),
    else two :func:`area_matrix` products (equal to it up to float rounding); both forms
    export to ONNX, where adaptive pooling to a grid that does not divide the side does not.
    """
    h, w = int(size[0]), int(size[1])  # ints: static sizes in a traced / exported graph
    H, W = int(mask.shape[-2]), int(mask.shape[-1])  # noqa: N806
    if (h, w) == (H, W):
        return mask
    if H % h == 0 and W % w == 0:
        return F.avg_pool2d(mask, (H // h, W // w))
    rows = area_matrix(H, h).to(mask.device, mask.dtype)
    cols = area_matrix(W, w).to(mask.device, mask.dtype).T
    return torch.matmul(torch.matmul(rows, mask), cols)


class FeatureStage(NamedTuple):
    """One stage of a timm body: its module, name, stride and channel count."""

    module: nn.Module
    name: str
    reduction: int
    channels: int


def feature_stages(body: nn.Module, max_stride: int) -> list[FeatureStage]:
    """The body's stages of stride <= ``max_stride``, shallow to deep (timm's ``feature_info``;
    an empty list for a body without one)."""
    info = getattr(body, "feature_info", None) or []
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    modules = dict(body.named_modules())
    return [
        FeatureStage(
            modules[e["module"]], e["module"], int(e["reduction"]), int(e.get("num_chs", 0))
        )
        for e in entries
        if e.get("reduction", 99) <= max_stride and e.get("module") in modules
    ]
