"""The paper's head: GAP -> 128 ELU -> drop .10 -> 64 ELU -> drop .05 -> 3 logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrguide.errors import ConfigError
from cxrguide.models.head import PaperHead


def test_layers_follow_the_paper() -> None:
    head = PaperHead(1280)
    layers = list(head.mlp) + [head.fc]
    kinds = [type(m) for m in layers]
    assert kinds == [nn.Linear, nn.ELU, nn.Dropout, nn.Linear, nn.ELU, nn.Dropout, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (1280, 128)
    assert (layers[3].in_features, layers[3].out_features) == (128, 64)
    assert (layers[6].in_features, layers[6].out_features) == (64, 3)
    assert [layers[2].p, layers[5].p] == [0.10, 0.05]
    expected = 1280 * 128 + 128 + 128 * 64 + 64 + 64 * 3 + 3
    assert sum(p.numel() for p in head.parameters()) == expected


def test_global_average_pooling_first() -> None:
    torch.manual_seed(0)
    head = PaperHead(16).eval()
    fmap = torch.randn(2, 16, 5, 7)
    logits = head(fmap)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, head(fmap.mean(dim=(2, 3))))
    # a map with the same channel means but a different layout gives the same logits
    torch.testing.assert_close(logits, head(fmap.flip(-1).flip(-2)))


def test_dropout_active_only_in_train_mode() -> None:
    torch.manual_seed(0)
    head = PaperHead(32, dropouts=(0.5, 0.5))
    x = torch.randn(4, 32, 2, 2)
    head.eval()
    torch.testing.assert_close(head(x), head(x))
    head.train()
    assert not torch.allclose(head(x), head(x))


def test_configurable_for_the_tuner() -> None:
    head = PaperHead(8, widths=(32,), dropouts=(0.2,), activation="relu", num_classes=5)
    assert isinstance(head.mlp[1], nn.ReLU)
    assert head(torch.randn(3, 8, 1, 1)).shape == (3, 5)
    assert PaperHead(8, widths=(), dropouts=())(torch.randn(2, 8, 3, 3)).shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"widths": (128,), "dropouts": (0.1, 0.05)}, "widths"),
        ({"activation": "swishy"}, "activation"),
        ({"dropouts": (1.0, 0.0)}, "dropouts"),
        ({"widths": (0, 64)}, "positive"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PaperHead(16, **kwargs)
