"""Differentiable Grad-CAM: equals pytorch-grad-cam, and a loss on it trains the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from cxrguide.attention.gradcam import grad_cam, model_cam, normalize_cam, tapped_features
from cxrguide.models.zoo import create_model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return create_model("mobilenet_v2", "none", seed=0).eval()


def _images(n: int = 3, size: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _lungs(n: int, size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    left = ((xx - size * 0.3) / (size * 0.17)) ** 2 + ((yy - size * 0.5) / (size * 0.32)) ** 2
    right = ((xx - size * 0.7) / (size * 0.17)) ** 2 + ((yy - size * 0.5) / (size * 0.32)) ** 2
    return ((left <= 1) | (right <= 1)).float().expand(n, 1, size, size).clone()


class _Gated(nn.Module):
    """model(x) with a fixed lung mask, the form pytorch-grad-cam can call."""

    def __init__(self, model: nn.Module, lung: torch.Tensor) -> None:
        super().__init__()
        self.model, self.lung = model, lung

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.lung)


def _oracle(net: nn.Module, tap: nn.Module, x: torch.Tensor, target: list[int]) -> np.ndarray:
    with GradCAM(model=net, target_layers=[tap]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in target])


@pytest.mark.parametrize("gated", [False, True])
def test_equals_pytorch_grad_cam_on_the_feature_tap(model, gated):
    x, target = _images(), [0, 0, 2]
    lung = _lungs(3, 96) if gated else None
    logits, ours = model_cam(model, x, torch.tensor(target), lung)
    ref = _oracle(_Gated(model, lung) if gated else model, model.feature_tap, x, target)
    assert ours.shape == (3, 1, 96, 96)
    assert (ref.max(axis=(1, 2)) > 0.999).sum() >= 2  # not trivially empty maps
    np.testing.assert_allclose(ours[:, 0].numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), model(x, lung).detach().numpy(), atol=1e-5)


def test_default_target_is_the_predicted_class(model):
    x = _images(2, 64, seed=3)
    logits, cam = model_cam(model, x)
    _, explicit = model_cam(model, x, logits.argmax(1))
    assert torch.equal(cam, explicit)


def test_grad_cam_by_hand_on_a_linear_head():
    """A^c = ReLU(sum_k w_k F_k), w = spatial mean of the gradient: here w_k = W[c, k] / (h w)."""
    feats = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]], [[3.0, 0.0], [1.0, 1.0]]]], requires_grad=True)
    weight = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    scores = (feats.mean((2, 3)) @ weight.T)[:, 1]  # class 1: w = (0.5, 2) / 4
    cam = grad_cam(feats, scores)
    raw = torch.relu(0.125 * feats[0, 0] + 0.5 * feats[0, 1]).detach()
    expected = (raw - raw.min()) / (raw.max() - raw.min() + 1e-7)
    assert torch.allclose(cam[0, 0], expected, atol=1e-6)


def test_normalize_cam_scales_each_image_and_keeps_empty_maps_empty():
    cam = torch.stack([torch.tensor([[2.0, 4.0], [6.0, 10.0]]), torch.zeros(2, 2)])[:, None]
    out = normalize_cam(cam)
    assert out[0].min() == 0 and out[0].max() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 0, 0, 1] == pytest.approx(0.25, abs=1e-6)
    assert torch.equal(out[1], torch.zeros(1, 2, 2))


def test_a_loss_on_the_map_reaches_the_body_and_second_order_the_head():
    model = create_model("mobilenet_v2", "none", seed=1).train()
    x, target = _images(2, 64, seed=1), torch.tensor([0, 2])
    grads = {}
    for second in (True, False):
        model.zero_grad(set_to_none=True)
        feats = tapped_features(model, x)
        scores = model.forward_head(feats).gather(1, target[:, None]).squeeze(1)
        cam = grad_cam(feats, scores, (64, 64), create_graph=second)
        cam[:, :, :32].mean().backward()  # e.g. "attend to the top half"
        body = [p.grad for p in model.body.parameters() if p.grad is not None]
        assert body and any(g.abs().sum() > 0 for g in body)
        grads[second] = model.head.fc.weight.grad
    # exact Grad-CAM differentiates through the weights w^c (the head); constants do not
    assert grads[True] is not None and grads[True].abs().sum() > 0
    assert grads[False] is None or grads[False].abs().sum() == 0


def test_evaluation_cam_leaves_no_gradients_and_works_with_a_frozen_body():
    model = create_model("mobilenet_v2", "none", seed=0).eval()
    frozen = create_model("mobilenet_v2", "none", seed=0).freeze_body().eval()
    x = _images(2, 64)
    _, cam = model_cam(frozen, x, torch.tensor([0, 0]))
    _, ref = model_cam(model, x, torch.tensor([0, 0]))
    assert ref.amax() > 0.99
    assert not cam.requires_grad and torch.allclose(cam, ref, atol=1e-6)
    assert all(p.grad is None for p in frozen.parameters())
    assert all(p.grad is None for p in model.parameters())
