"""CxrClassifier: gray input handling, lung gate, Grad-CAM tap, frozen body."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrguide.models.classifier import CxrClassifier, gate_features
from cxrguide.models.zoo import create_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def mobilenet() -> CxrClassifier:
    return create_model("mobilenet_v2", seed=0)


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in module.named_buffers() if n.endswith("running_mean")]


def test_gray_is_repeated_and_normalised_with_the_backbone_stats(mobilenet) -> None:
    x = torch.rand(2, 1, 8, 8)
    prepared = mobilenet.prepare(x)
    assert prepared.shape == (2, 3, 8, 8)
    for c in range(3):
        torch.testing.assert_close(prepared[:, c], (x[:, 0] - IMAGENET_MEAN[c]) / IMAGENET_STD[c])


def test_resnet_v2_uses_half_half_normalisation() -> None:
    model = create_model("resnet50_v2", seed=0)
    x = torch.rand(1, 1, 4, 4)
    torch.testing.assert_close(model.prepare(x), (x.expand(-1, 3, -1, -1) - 0.5) / 0.5)


def test_rejects_wrong_input_shape(mobilenet) -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        mobilenet(torch.rand(2, 64, 64))


def test_gate_resizes_the_mask_by_area() -> None:
    features = torch.ones(1, 2, 2, 2)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :4] = 1.0  # top-left feature cell fully inside
    mask[..., 4:6, 4:8] = 1.0  # bottom-right cell half inside
    gated = gate_features(features, mask)
    expected = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    torch.testing.assert_close(gated[0, 0], expected)
    torch.testing.assert_close(gated[0, 1], expected)
    with pytest.raises(ValueError, match="batch"):
        gate_features(torch.ones(2, 2, 2, 2), mask)


def test_forward_applies_the_gate_before_the_tap(mobilenet) -> None:
    model = mobilenet.eval()
    x = torch.rand(2, 1, 64, 64)
    tapped = []
    handle = model.feature_tap.register_forward_hook(lambda m, i, o: tapped.append(o.detach()))
    try:
        with torch.no_grad():
            plain = model(x)
            ones = model(x, lung_mask=torch.ones(2, 1, 64, 64))
            zeros = model(x, lung_mask=torch.zeros(2, 1, 64, 64))
            features = model.forward_features(x)
    finally:
        handle.remove()
    torch.testing.assert_close(plain, ones)
    torch.testing.assert_close(tapped[0], features)
    assert torch.count_nonzero(tapped[2]) == 0
    torch.testing.assert_close(zeros, model.head(torch.zeros(2, 1280)))
    assert not torch.allclose(plain, zeros)


def test_frozen_body_gets_no_gradient_and_keeps_batchnorm_stats() -> None:
    model = create_model("mobilenet_v2", seed=0).freeze_body()
    model.train()
    assert model.training and model.head.training and not model.body.training
    before = _bn_stats(model.body)
    loss = model(torch.rand(2, 1, 64, 64)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is None for p in model.body_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head_parameters())
    for a, b in zip(before, _bn_stats(model.body), strict=True):
        torch.testing.assert_close(a, b)

    model.unfreeze_body()
    assert model.body.training
    model(torch.rand(2, 1, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.body_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, _bn_stats(model.body), strict=True))


def test_pytorch_grad_cam_can_target_the_tap_of_a_frozen_model(mobilenet) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = create_model("mobilenet_v2", seed=1).freeze_body()
    x = torch.rand(2, 1, 64, 64)
    with GradCAM(model=model, target_layers=[model.feature_tap]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(0), ClassifierOutputTarget(2)])
    assert maps.shape == (2, 64, 64)
    assert maps.max() > 0
    assert all(p.grad is None for p in model.body_parameters())
