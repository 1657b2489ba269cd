"""Augmentations that move image and mask together (one affine grid for both).

The geometric part (rotation, zoom, shift, optional flip) builds one sampling grid and applies
it to the image with bilinear and to the mask with nearest interpolation, so a mask pixel lands
exactly where its image pixel lands; both are padded with 0 (air / background), like the
letterbox. The photometric part (gamma, contrast) touches the image only. Randomness comes from
torch's global generator, which the training engine seeds and saves in ``last.pt``, so a
resumed run draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PairAugment:
    rotate: float = 10.0  # max degrees
    zoom: float = 0.1  # max relative scale change
    shift: float = 0.06  # max translation, fraction of the side
    contrast: float = 0.25  # max log-gamma and relative contrast change
    hflip: bool = False

    def _uniform(self, n: int, bound: float) -> torch.Tensor:
        return (torch.rand(n) * 2 - 1) * bound

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` float (B, 1, H, W) in [0, 1] and ``mask`` (B, 1, H, W) {0, 1}."""
        squeeze = image.ndim == 3
        if squeeze:
            image, mask = image[None], mask[None]
        b = image.shape[0]
        angle = self._uniform(b, math.radians(self.rotate))
        scale = 1 + self._uniform(b, self.zoom)
        tx, ty = self._uniform(b, 2 * self.shift), self._uniform(b, 2 * self.shift)
        flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0) if self.hflip else torch.ones(b)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
        ).to(image.device, image.dtype)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        image = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
        mask = F.grid_sample(mask.to(image.dtype), grid, mode="nearest", align_corners=False)
        if self.contrast > 0:
            gamma = torch.exp(self._uniform(b, self.contrast)).view(b, 1, 1, 1).to(image.device)
            gain = (1 + self._uniform(b, self.contrast)).view(b, 1, 1, 1).to(image.device)
            image = image.clamp(0, 1) ** gamma
            mean = image.mean(dim=(2, 3), keepdim=True)
            image = ((image - mean) * gain + mean).clamp(0, 1)
        if squeeze:
            image, mask = image[0], mask[0]
        return image, mask
