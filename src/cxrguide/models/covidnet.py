"""COVID-Net CXR Small / Large bodies rebuilt from the published PEPX design.

Source: Wang, Lin & Wong, "COVID-Net: a tailored deep convolutional neural network design for
detection of COVID-19 cases from chest X-ray images", Sci. Rep. 10:19549 (2020), Fig. 2, and the
model table of github.com/lindawangg/COVID-Net (docs/models.md). Only TensorFlow graphs of the
trained models were released (no layer-by-layer description, no PyTorch weights), so this is a
re-implementation of the published *design*, always built with random weights.

Taken from the paper:
- 224x224x3 input; a 7x7 stride-2 convolution, then four stages of PEPX modules at 56x56, 28x28,
  14x14 and 7x7, with 3, 4, 6 and 3 modules and 256, 512, 1024 and 2048 output channels; the last
  feature map is 7x7x2048 (the study's Table 2 row for CXR Small/Large).
- PEPX = 1x1 first-stage projection -> 1x1 expansion -> 3x3 depthwise -> 1x1 second-stage
  projection -> 1x1 extension.
- Dense connectivity: inside a stage every module receives the sum of the outputs of all earlier
  modules of that stage (the many arrows of Fig. 2), and the stage output is the sum of all of
  them. CXR Large additionally has one 1x1 convolution per stage (the "Conv1x1" boxes) whose
  output joins every sum of the stage, a projected shortcut of the stage input.

Chosen here (not published), documented so results can be read in that light:
- The internal widths of each PEPX (the design was machine-generated and differs per module).
  We use one rule per variant, projection = ``proj_ratio`` x output width and expansion =
  ``expand_ratio`` x output width: Small 1/4 and 1/2 (64/128 channels in stage 1 up to 512/1024
  in stage 4), Large 5/16 and 5/8 (80/160 up to 640/1280) plus the stage shortcuts. The ratios
  were picked so the measured body lands near the published totals once the original
  flatten -> FC1024 -> FC256 -> FC3 head (103.0 M parameters, 0.10 G MACs) is taken away:
  published Small 117.4 M / 2.26 G -> about 14.4 M / 2.16 G for the body (measured here:
  14.5 M / 2.49 G); Large 127.4 M / 3.59 G -> about 24.4 M / 3.49 G (measured: 22.5 M / 3.70 G).
  See ``COVIDNET_PUBLISHED`` and tests/models/test_covidnet.py.
- BatchNorm + ReLU after every convolution (the paper does not describe normalisation layers;
  without them training from scratch on a few thousand images is fragile).
- Downsampling by 2x2 max pooling of the stage input before its first module (stem: 7x7/2 conv
  and 2x2 max pooling, 224 -> 56).
- Input scaling: the reference code divides pixels by 255 and subtracts no mean, so the
  normalisation is mean 0 / std 1 on [0, 1] images.

This module builds the body only, ending at the 7x7x2048 map; the zoo puts the study's head
(:mod:`cxrguide.models.head`) on it as on every backbone, in place of the original flatten-FC head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

STAGE_WIDTHS: tuple[int, ...] = (256, 512, 1024, 2048)
STAGE_DEPTHS: tuple[int, ...] = (3, 4, 6, 3)
STEM_WIDTH = 64

# Published totals (with the original flatten + FC1024 + FC256 + FC3 head) from the COVID-Net
# repository's model table, and that head's own size: params 7*7*2048*1024 + 1024 + 1024*256 +
# 256 + 256*3 + 3, MACs the same without the biases.
ORIGINAL_HEAD_PARAMS_M = 103.024643
ORIGINAL_HEAD_MACS_G = 0.103021
COVIDNET_PUBLISHED: dict[str, dict[str, float]] = {
    "small": {"params_m": 117.4, "macs_g": 2.26},
    "large": {"params_m": 127.4, "macs_g": 3.59},
}


@dataclass(frozen=True)
class CovidNetVariant:
    """One member of the family: PEPX internal-width ratios and whether stages have shortcuts."""

    proj_ratio: float
    expand_ratio: float
    stage_shortcuts: bool


VARIANTS: dict[str, CovidNetVariant] = {
    "small": CovidNetVariant(proj_ratio=0.25, expand_ratio=0.5, stage_shortcuts=False),
    "large": CovidNetVariant(proj_ratio=0.3125, expand_ratio=0.625, stage_shortcuts=True),
}


def _conv_bn_act(
    cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PEPX(nn.Module):
    """Projection -> expansion -> depthwise 3x3 -> projection -> extension (all 1x1 but one)."""

    def __init__(self, in_channels: int, out_channels: int, proj: int, expand: int) -> None:
        super().__init__()
        self.project1 = _conv_bn_act(in_channels, proj)
        self.expand = _conv_bn_act(proj, expand)
        self.depthwise = _conv_bn_act(expand, expand, kernel=3, groups=expand)
        self.project2 = _conv_bn_act(expand, proj)
        self.extend = _conv_bn_act(proj, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project2(self.depthwise(self.expand(self.project1(x))))
        return self.extend(x)


class DenseStage(nn.Module):
    """PEPX modules where each one sees the sum of all earlier outputs (and the shortcut)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int,
        variant: CovidNetVariant,
        downsample: bool,
    ) -> None:
        super().__init__()
        proj = max(8, round(out_channels * variant.proj_ratio))
        expand = max(8, round(out_channels * variant.expand_ratio))
        self.pool = nn.MaxPool2d(2) if downsample else nn.Identity()
        self.shortcut = _conv_bn_act(in_channels, out_channels) if variant.stage_shortcuts else None
        self.blocks = nn.ModuleList(
            PEPX(in_channels if i == 0 else out_channels, out_channels, proj, expand)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        total = self.shortcut(x) if self.shortcut is not None else None
        for i, block in enumerate(self.blocks):
            y = block(x if i == 0 else total)
            total = y if total is None else total + y
        assert total is not None
        return total


class CovidNet(nn.Module):
    """COVID-Net CXR body: stem + four densely connected PEPX stages -> (B, 2048, H/32, W/32).

    Mirrors the small part of timm's interface the classifier uses: ``forward_features``,
    ``num_features`` and ``pretrained_cfg`` (input size and normalisation).
    """

    def __init__(
        self,
        variant: str = "small",
        in_chans: int = 3,
        stage_widths: Sequence[int] = STAGE_WIDTHS,
        stage_depths: Sequence[int] = STAGE_DEPTHS,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown COVID-Net variant {variant!r}; one of {sorted(VARIANTS)}")
        spec = VARIANTS[variant]
        self.variant = variant
        self.stem = nn.Sequential(
            _conv_bn_act(in_chans, STEM_WIDTH, kernel=7, stride=2), nn.MaxPool2d(2)
        )
        stages = []
        prev = STEM_WIDTH
        for i, (width, depth) in enumerate(zip(stage_widths, stage_depths, strict=True)):
            stages.append(DenseStage(prev, width, depth, spec, downsample=i > 0))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.pretrained_cfg: dict[str, Any] = {
            "input_size": (3, 224, 224),
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "architecture": f"covidnet_cxr_{variant}",
        }
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
