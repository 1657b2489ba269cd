"""The lung segmenter: a U-Net (MONAI ``BasicUNet`` or segmentation-models-pytorch) + its loss.

:class:`LungSegmenter` wraps the network with the input normalisation (per-image zero mean,
unit variance), so training, evaluation and prediction all feed it the same thing: gray images
in [0, 1], shape (B, 1, H, W); it returns one logit map per image. Per-image standardisation
rather than fixed statistics, because the public films differ widely in exposure and windowing.

``BasicUNet`` is the classic 2-D U-Net (two convs per level, four poolings), built from code
only: nothing is downloaded. ``smp`` gives ImageNet-pretrained encoders to users who have the
weights: pass a local file (offline) or ``"imagenet"`` (downloads from the hub).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from cxrguide.core.checkpoint import load_checkpoint
from cxrguide.errors import ConfigError, CxrGuideError


class LungSegmenter(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(normalize(x))


def normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image standardisation of (B, C, H, W) (a blank image stays 0)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / (std + eps)


def _load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a local encoder state dict (torchvision / timm / smp naming), 3->1 channel stem."""
    if not path.is_file():
        raise ConfigError(f"encoder_weights: {path} not found (give a file, 'imagenet' or none)")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = load_checkpoint(path)
        state = state.get("state_dict", state.get("model", state))
    own = encoder.state_dict()
    matched = {}
    for key, value in state.items():
        key = key.removeprefix("encoder.").removeprefix("module.")
        if key not in own:
            continue
        if value.ndim == 4 and own[key].shape[1] == 1 and value.shape[1] == 3:
            value = value.sum(dim=1, keepdim=True)  # smp's own rule for gray input
        if value.shape == own[key].shape:
            matched[key] = value
    if len(matched) < 0.9 * len(own):
        raise ConfigError(
            f"encoder_weights: {path} matches only {len(matched)} of {len(own)} encoder tensors"
        )
    encoder.load_state_dict(matched, strict=False)


def build_unet(
    arch: str = "basicunet",
    features: Sequence[int] = (16, 32, 64, 128, 256, 16),
    encoder: str = "resnet34",
    encoder_weights: str | None = None,
) -> LungSegmenter:
    """One-channel in, one logit out. ``encoder_weights`` is used by ``arch="smp"`` only."""
    if arch == "basicunet":
        from monai.networks.nets import BasicUNet

        net = BasicUNet(
            spatial_dims=2, in_channels=1, out_channels=1, features=tuple(features), dropout=0.0
        )
        return LungSegmenter(net)
    if arch != "smp":
        raise ConfigError(f"arch: {arch!r} is not one of 'basicunet', 'smp'")
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise ConfigError(
            "arch: smp needs segmentation-models-pytorch (pip install segmentation-models-pytorch)"
        ) from None
    hub = encoder_weights if encoder_weights in ("imagenet",) else None
    try:
        net = smp.Unet(encoder, encoder_weights=hub, in_channels=1, classes=1)
    except KeyError:
        raise ConfigError(f"encoder: {encoder!r} is not an smp encoder") from None
    except Exception as err:  # hub download failures come in many types
        raise CxrGuideError(
            f"encoder_weights: could not fetch {hub!r} weights for {encoder} ({err}); "
            "pass a local weights file or none"
        ) from None
    if encoder_weights and hub is None and encoder_weights.lower() != "none":
        _load_encoder_weights(net.encoder, Path(encoder_weights))
    return LungSegmenter(net)


class DiceBCELoss(nn.Module):
    """``dice_weight`` x soft Dice (per image) + ``bce_weight`` x BCE on logits: MONAI's
    ``DiceCELoss(sigmoid=True)``, which for one output channel uses ``BCEWithLogitsLoss``.

    Dice makes the small-lung films count as much as the large ones and is insensitive to the
    background share; BCE gives well-scaled pixel gradients early on, when Dice is flat. The
    same loss as the former hand-written sum (``DiceLoss(sigmoid=True, smooth_nr=smooth_dr=
    1e-5)``, per image, mean + mean BCE): ``tests/lungs/test_unet.py`` checks the values. The
    one addition: logits and target are cast to float32 first, so bf16 autocast does not round
    the Dice sums. (MONAI is imported here, not at module level: it takes seconds to import.)
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.loss = DiceCELoss(
            sigmoid=True,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
            batch=False,
            reduction="mean",
            lambda_dice=dice_weight,
            lambda_ce=bce_weight,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), target.float())
