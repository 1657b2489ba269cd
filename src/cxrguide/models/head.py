"""The study's classification head, shared by every backbone.

Danilov et al. put the same small MLP on every Stage I body: global average pooling ->
Dense 128 + ELU -> Dropout 0.10 -> Dense 64 + ELU -> Dropout 0.05 -> Dense 3. The head returns
logits; softmax belongs to the loss and to ``predict`` so training stays numerically stable.
Widths, dropouts and the activation are arguments so the tuner can search them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cxrguide.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


class PaperHead(nn.Module):
    """GAP -> (Linear -> activation -> Dropout) per hidden width -> Linear(num_classes).

    Input is a feature map ``(B, C, h, w)`` (or already pooled ``(B, C)``); output ``(B, K)``
    logits. ``widths=()`` gives plain GAP + linear (useful as an ablation).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (128, 64),
        dropouts: Sequence[float] = (0.10, 0.05),
        activation: str = "elu",
        num_classes: int = 3,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        dropouts = tuple(float(d) for d in dropouts)
        if len(widths) != len(dropouts):
            raise ConfigError(
                f"head: {len(widths)} widths {widths} but {len(dropouts)} dropouts {dropouts}"
            )
        if any(w <= 0 for w in widths) or in_channels <= 0 or num_classes <= 0:
            raise ConfigError(f"head: widths {widths} and num_classes must be positive")
        if any(not 0.0 <= d < 1.0 for d in dropouts):
            raise ConfigError(f"head: dropouts {dropouts} must lie in [0, 1)")
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"head: activation {activation!r} is not one of {', '.join(sorted(ACTIVATIONS))}"
            )
        self.in_channels = in_channels
        self.widths = widths
        self.dropouts = dropouts
        self.activation = activation
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        prev = in_channels
        for width, drop in zip(widths, dropouts, strict=True):
            layers += [nn.Linear(prev, width), ACTIVATIONS[activation](), nn.Dropout(drop)]
            prev = width
        self.mlp = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3)) if features.dim() == 4 else features
        return self.fc(self.mlp(pooled))
