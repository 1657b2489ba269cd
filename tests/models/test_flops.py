"""MAC and parameter counting, checked on layers with known costs and on published figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrguide.models.flops import count_keras_params, count_macs, count_parameters, measure_model


def test_macs_of_known_layers() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, (1, 3, 10, 10)) == 8 * 3 * 9 * 100
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_macs(depthwise, (2, 8, 10, 10)) == 2 * 8 * 9 * 100
    assert count_macs(nn.Linear(10, 5), (4, 10)) == 4 * 50


def test_keras_style_count_adds_batchnorm_statistics() -> None:
    block = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8))
    assert count_parameters(block) == 24 + 16
    assert count_keras_params(block) == 24 + 16 + 16


def test_counts_work_on_the_meta_device() -> None:
    with torch.device("meta"):
        conv = nn.Conv2d(3, 4, 3)
    assert count_macs(conv, (1, 3, 5, 5)) == 4 * 3 * 9 * 9


@pytest.mark.parametrize(
    "name, gmacs",
    # published single-image GMACs of these architectures (timm's results tables / papers);
    # VGG-16's 15.47 minus its fc layers (0.12), since the study's head replaces them
    [("mobilenet_v2", 0.30), ("vgg16", 15.35), ("resnet50_v2", 4.1), ("inception_v3", 5.7)],
)
def test_model_macs_match_published_figures(name: str, gmacs: float) -> None:
    assert measure_model(name).macs / 1e9 == pytest.approx(gmacs, rel=0.03)
