"""COVID-Net CXR Small/Large rebuilt from the published PEPX design."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrguide.models.covidnet import (
    COVIDNET_PUBLISHED,
    ORIGINAL_HEAD_MACS_G,
    ORIGINAL_HEAD_PARAMS_M,
    PEPX,
    VARIANTS,
    CovidNet,
    DenseStage,
)
from cxrguide.models.flops import count_macs, count_parameters


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_pepx_is_projection_expansion_depthwise_projection_extension() -> None:
    block = PEPX(64, 256, proj=64, expand=128)
    convs = _convs(block)
    assert [c.kernel_size for c in convs] == [(1, 1), (1, 1), (3, 3), (1, 1), (1, 1)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 64),
        (64, 256),
    ]
    assert convs[2].groups == 128  # depthwise
    assert block(torch.randn(1, 64, 5, 5)).shape == (1, 256, 5, 5)


@pytest.mark.parametrize("shortcuts", [False, True])
def test_stage_is_densely_connected(shortcuts: bool) -> None:
    torch.manual_seed(0)
    variant = VARIANTS["large" if shortcuts else "small"]
    stage = DenseStage(8, 16, depth=4, variant=variant, downsample=True).eval()
    seen_in, seen_out = [], []

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen_in.append(inputs[0])
        seen_out.append(output)

    for block in stage.blocks:
        block.register_forward_hook(record)
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        out = stage(x)
        pooled = nn.functional.max_pool2d(x, 2)
        short = stage.shortcut(pooled) if shortcuts else torch.zeros_like(seen_out[0])
    assert (stage.shortcut is not None) == shortcuts
    torch.testing.assert_close(seen_in[0], pooled)
    for k in range(1, 4):
        torch.testing.assert_close(seen_in[k], short + sum(seen_out[:k]))
    torch.testing.assert_close(out, short + sum(seen_out))
    assert out.shape == (2, 16, 6, 6)


@pytest.mark.parametrize("variant", ["small", "large"])
def test_layout_and_final_map(variant: str) -> None:
    with torch.device("meta"):
        net = CovidNet(variant)
    assert [len(s.blocks) for s in net.stages] == [3, 4, 6, 3]
    assert [s.blocks[-1].extend[0].out_channels for s in net.stages] == [256, 512, 1024, 2048]
    assert net.num_features == 2048
    assert net.forward_features(torch.zeros(1, 3, 224, 224, device="meta")).shape == (
        1,
        2048,
        7,
        7,
    )
    assert net.pretrained_cfg["mean"] == (0.0, 0.0, 0.0)


def test_runs_for_real_on_a_small_image() -> None:
    torch.manual_seed(0)
    net = CovidNet("small").eval()
    with torch.no_grad():
        out = net.forward_features(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 2048, 2, 2)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("variant", ["small", "large"])
def test_size_near_the_published_body(variant: str) -> None:
    """Body = published total minus the original flatten-FC head; the widths were fitted to it."""
    with torch.device("meta"):
        net = CovidNet(variant)
    params_m = count_parameters(net) / 1e6
    macs_g = count_macs(net, (1, 3, 224, 224)) / 1e9
    published = COVIDNET_PUBLISHED[variant]
    assert params_m == pytest.approx(published["params_m"] - ORIGINAL_HEAD_PARAMS_M, rel=0.10)
    assert macs_g == pytest.approx(published["macs_g"] - ORIGINAL_HEAD_MACS_G, rel=0.20)


def test_large_is_bigger_than_small() -> None:
    with torch.device("meta"):
        small, large = CovidNet("small"), CovidNet("large")
    assert count_parameters(large) > 1.4 * count_parameters(small)


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="variant"):
        CovidNet("medium")
