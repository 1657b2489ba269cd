"""The one augmenter: image and (optional) mask moved together, torchvision v2.

Used by classification (:class:`~cxrguide.data.datasets.CxrDataset`) and lung segmentation
(:class:`~cxrguide.lungs.train.LungsDataset`), one item at a time inside the dataset: v2 draws
one set of parameters per call, so a batch would share one rotation; per item, every film gets
its own, and the work runs in the loader's workers.

Geometric (rotation, shift, zoom, optional horizontal flip): one ``v2.RandomAffine`` call on
``tv_tensors.Image`` + ``tv_tensors.Mask``, so a mask pixel lands exactly where its image pixel
lands. The image is resampled bilinearly, the mask with nearest neighbour (torchvision's rule for
``Mask``: labels stay labels); both are padded with 0 (air / background), like the letterbox.
Flips are off by default because anatomy is not symmetric (the heart is on the left).
Photometric (brightness, contrast: ``v2.ColorJitter``) touches the image only, clamped to [0, 1].

Randomness: torchvision v2 draws from torch's global generator (``torch.rand`` / ``uniform_`` /
``randperm``), which the training engine seeds and saves in ``last.pt``; with loader workers,
each worker's generator is seeded from the loader's (seed, epoch) generator. Either way the same
seed gives the same augmentations, and a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class CxrAugment:
    """CXR-safe augmentation; every strength 0 (and ``hflip`` False) is the identity."""

    rotate: float = 7.0  # max degrees either way
    shift: float = 0.06  # max translation, fraction of the side
    zoom: float = 0.08  # max relative scale change
    brightness: float = 0.15  # max relative brightness change
    contrast: float = 0.15  # max relative contrast change
    hflip: bool = False
    _transforms: tuple[Any, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from torchvision.transforms import v2

        geometric = [
            v2.RandomAffine(
                degrees=self.rotate,
                translate=(self.shift, self.shift),
                scale=(1 - self.zoom, 1 + self.zoom),
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        ]
        if self.hflip:
            geometric.append(v2.RandomHorizontalFlip())
        photometric = v2.ColorJitter(
            brightness=self.brightness or None, contrast=self.contrast or None
        )
        object.__setattr__(self, "_transforms", (v2.Compose(geometric), photometric))

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``image`` float (C, H, W) in [0, 1]; ``mask`` (C, H, W) or None. Same shapes out."""
        from torchvision import tv_tensors

        geometric, photometric = self._transforms
        if mask is None:
            image = geometric(tv_tensors.Image(image))
        else:
            image, mask = geometric(tv_tensors.Image(image), tv_tensors.Mask(mask))
            mask = mask.as_subclass(torch.Tensor)
        image = photometric(image).as_subclass(torch.Tensor).clamp(0, 1)
        return image, mask
