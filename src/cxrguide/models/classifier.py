"""Body + optional lung gate + Grad-CAM tap + the paper's head, as one module.

Every stage calls this one class:

- Stage I trains the head on a frozen body (:meth:`CxrClassifier.freeze_body` keeps BatchNorm
  statistics fixed too, like Keras' ``trainable=False``; ``requires_grad=False`` alone does not).
- Stage II unfreezes the body.
- Stage III multiplies the last conv map by the lung mask (resized to the feature grid) and
  computes Grad-CAM on ``feature_tap``, an ``nn.Identity`` after the gate that both our
  differentiable Grad-CAM and pytorch-grad-cam can hook.

Inputs are single-channel images in [0, 1], shape ``(B, 1, H, W)``. The model repeats them to
3 channels and applies the backbone's own normalisation (ImageNet mean/std for most; 0.5/0.5 for
Inception and ResNet V2; none for COVID-Net), so callers never deal with either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrguide.models.head import PaperHead


def gate_features(features: torch.Tensor, lung_mask: torch.Tensor) -> torch.Tensor:
    """Multiply ``(B, C, h, w)`` features by a ``(B, 1, H, W)`` mask area-resized to ``(h, w)``.

    Area interpolation keeps soft values: a feature cell half inside the lungs gets 0.5.
    """
    if lung_mask.dim() == 3:
        lung_mask = lung_mask.unsqueeze(1)
    if lung_mask.dim() != 4 or lung_mask.shape[1] != 1:
        raise ValueError(f"lung_mask must be (B, 1, H, W), got {tuple(lung_mask.shape)}")
    if lung_mask.shape[0] != features.shape[0]:
        raise ValueError(
            f"lung_mask batch {lung_mask.shape[0]} != feature batch {features.shape[0]}"
        )
    grid = F.interpolate(lung_mask.to(features.dtype), size=features.shape[-2:], mode="area")
    return features * grid


class CxrClassifier(nn.Module):
    """A backbone's last conv map -> (lung gate) -> ``feature_tap`` -> :class:`PaperHead`."""

    def __init__(
        self,
        body: nn.Module,
        head: PaperHead,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        name: str = "",
        input_size: tuple[int, int] = (224, 224),
        weights_source: str = "random",
    ) -> None:
        super().__init__()
        self.body = body
        self.feature_tap = nn.Identity()
        self.head = head
        self.register_buffer(
            "pixel_mean",
            torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.name = name
        self.input_size = tuple(input_size)
        self.num_features = head.in_channels
        self.weights_source = weights_source
        self._body_frozen = False

    # --- forward pieces -------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Gray ``(B, 1, H, W)`` in [0, 1] -> the backbone's normalised 3-channel input."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1, H, W) in [0, 1], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, self.pixel_mean.shape[1], -1, -1)
        return (x - self.pixel_mean) / self.pixel_std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The body's last convolutional feature map ``(B, C, h, w)`` (before any gate)."""
        return self.body.forward_features(self.prepare(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from a (possibly gated) feature map; passes through ``feature_tap``.

        With a frozen body the map carries no gradient, so Grad-CAM (ours or pytorch-grad-cam's
        hook on ``feature_tap``) would have nothing to read; when autograd is on, the map is made
        a leaf that requires grad. The body's parameters still receive nothing.
        """
        if torch.is_grad_enabled() and not features.requires_grad:
            features = features.detach().requires_grad_()
        return self.head(self.feature_tap(features))

    def forward(self, x: torch.Tensor, lung_mask: torch.Tensor | None = None) -> torch.Tensor:
        features = self.forward_features(x)
        if lung_mask is not None:
            features = gate_features(features, lung_mask)
        return self.forward_head(features)

    # --- parameter groups and freezing ------------------------------------------------------
    def body_parameters(self) -> Iterator[nn.Parameter]:
        return self.body.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    @property
    def body_frozen(self) -> bool:
        return self._body_frozen

    def freeze_body(self) -> CxrClassifier:
        """Stop gradients into the body and keep it in eval mode (BatchNorm stats, dropout)."""
        for p in self.body.parameters():
            p.requires_grad_(False)
        self._body_frozen = True
        self.body.eval()
        return self

    def unfreeze_body(self) -> CxrClassifier:
        for p in self.body.parameters():
            p.requires_grad_(True)
        self._body_frozen = False
        self.body.train(self.training)
        return self

    def train(self, mode: bool = True) -> CxrClassifier:
        super().train(mode)
        if self._body_frozen:
            self.body.eval()
        return self

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, weights={self.weights_source!r}"
