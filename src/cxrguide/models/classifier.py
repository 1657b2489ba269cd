"""Body + optional lung gate + Grad-CAM tap + the paper's head, as one module.

Every stage calls this one class:

- Stage I trains the head on a frozen body (:meth:`CxrClassifier.freeze_body` keeps BatchNorm
  statistics fixed too, like Keras' ``trainable=False``; ``requires_grad=False`` alone does not).
- Stage II unfreezes the body.
- Stage III multiplies the last conv map by the lung mask (resized to the feature grid) and
  computes Grad-CAM on ``feature_tap``, an ``nn.Identity`` after the gate that both our
  differentiable Grad-CAM and pytorch-grad-cam can hook.
- Where a given lung mask enters is :attr:`CxrClassifier.lung_inputs` (:data:`LUNG_INPUTS`):
  ``last`` (the study's gate, the default), ``early`` (every feature map of stride <= 16 gated
  by the dilated mask, through forward hooks: a cell that sees a marker is zeroed before it
  mixes with lung cells) and ``input`` (the film blanked outside the dilated mask). The last
  map's receptive field covers the whole film, so only the two earlier places keep a marker
  out of the decision (README, shortcut benchmark).

Inputs are single-channel images in [0, 1], shape ``(B, 1, H, W)``. The model repeats them to
3 channels and applies the backbone's own normalisation (ImageNet mean/std for most; 0.5/0.5 for
Inception and ResNet V2; none for COVID-Net), so callers never deal with either.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from cxrguide.models.grid import feature_stages, mask_to_grid
from cxrguide.models.head import PaperHead


def gate_features(features: torch.Tensor, lung_mask: torch.Tensor) -> torch.Tensor:
    """Multiply ``(B, C, h, w)`` features by a ``(B, 1, H, W)`` mask area-resized to ``(h, w)``.

    The mask lands on the grid by :func:`~cxrguide.models.grid.mask_to_grid` (soft values kept).
    """
    if lung_mask.dim() == 3:
        lung_mask = lung_mask.unsqueeze(1)
    if lung_mask.dim() != 4 or lung_mask.shape[1] != 1:
        raise ValueError(f"lung_mask must be (B, 1, H, W), got {tuple(lung_mask.shape)}")
    if lung_mask.shape[0] != features.shape[0]:
        raise ValueError(
            f"lung_mask batch {lung_mask.shape[0]} != feature batch {features.shape[0]}"
        )
    return features * mask_to_grid(lung_mask.to(features.dtype), features.shape[-2:])


LUNG_INPUTS = ("input", "early", "last")  # where a lung mask enters the network
EARLY_MAX_STRIDE = 16  # the early gate covers every feature map up to this stride


def dilate_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow a ``(B, 1, H, W)`` mask by ``pixels`` (square max filter; ONNX-exportable)."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, 2 * pixels + 1, stride=1, padding=pixels)


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
        self.lung_inputs: tuple[str, ...] = ("last",)
        self.lung_dilation = 0.0  # fraction of the input side the mask grows by (input, early)

    # --- where lung masks enter ----------------------------------------------------------
    def set_lung_inputs(self, inputs: Iterable[str], dilation: float = 0.0) -> CxrClassifier:
        """Choose where a mask given to :meth:`forward` enters (see :data:`LUNG_INPUTS`)."""
        wanted = set(inputs)
        unknown = wanted - set(LUNG_INPUTS)
        inputs = tuple(m for m in LUNG_INPUTS if m in wanted)
        if unknown or dilation < 0:
            raise ValueError(f"lung inputs {sorted(unknown)} / dilation {dilation} invalid")
        if "early" in inputs:
            self.early_modules()  # a body without feature_info cannot take the early gate
        self.lung_inputs, self.lung_dilation = inputs, float(dilation)
        return self

    def early_modules(self) -> list[nn.Module]:
        """The body's stages of stride <= 16 (timm's ``feature_info``)."""
        if not getattr(self.body, "feature_info", None):
            raise ValueError(f"{self.name}: no feature_info, so no early lung gate")
        return [stage.module for stage in feature_stages(self.body, EARLY_MAX_STRIDE)]

    @contextmanager
    def early_gates(self, wide: torch.Tensor) -> Iterator[None]:
        """Gate every early stage's output by ``wide`` for the calls inside the block.

        The hooks hold the mask in their closure and are removed on exit, so nothing of one
        call stays on the module for the next.
        """

        def gate(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                return output
            return output * mask_to_grid(wide.to(output.dtype), output.shape[-2:])

        handles = [m.register_forward_hook(gate) for m in self.early_modules()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def wide_mask(self, lung_mask: torch.Tensor, side: int) -> torch.Tensor:
        """The mask grown by ``lung_dilation`` of the side (what ``input``/``early`` use)."""
        return dilate_mask(lung_mask, int(round(self.lung_dilation * int(side))))

    def lung_features(
        self, x: torch.Tensor, lung_mask: torch.Tensor | None = None, *, last: bool = True
    ) -> torch.Tensor:
        """The last feature map with the mask applied where :attr:`lung_inputs` say.

        ``last=False`` leaves out the last-map gate (the exporter applies its own).
        """
        if lung_mask is None:
            return self.forward_features(x)
        if lung_mask.dim() == 3:
            lung_mask = lung_mask.unsqueeze(1)
        lung_mask = lung_mask.to(x.dtype)
        wide = None
        if "input" in self.lung_inputs or "early" in self.lung_inputs:
            wide = self.wide_mask(lung_mask, x.shape[-1])
        if "input" in self.lung_inputs:
            x = x * wide
        if "early" in self.lung_inputs:
            assert wide is not None
            with self.early_gates(wide):
                features = self.forward_features(x)
        else:
            features = self.forward_features(x)
        if last and "last" in self.lung_inputs:
            features = gate_features(features, lung_mask)
        return features

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
        return self.forward_head(self.lung_features(x, lung_mask))

    def logits_and_features(
        self, x: torch.Tensor, lung_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the pooled (gated) features the head reads ``(B, C)``: the penultimate
        features the OOD score is computed on (:mod:`cxrguide.core.reliability`)."""
        features = self.lung_features(x, lung_mask)
        return self.forward_head(features), features.mean(dim=(2, 3))

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
