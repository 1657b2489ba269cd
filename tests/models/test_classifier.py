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


# --- where lung masks enter (lung_inputs): issue 16 -------------------------------------------


def _lungs(side: int = 64) -> torch.Tensor:
    """Two rectangular 'lungs' in the middle of the film, (1, 1, S, S)."""
    m = torch.zeros(1, 1, side, side)
    m[..., 16:48, 12:28] = 1
    m[..., 16:48, 36:52] = 1
    return m


@pytest.mark.parametrize("inputs", [("input",), ("early",)])
def test_outside_the_dilated_lungs_does_not_change_the_prediction(inputs) -> None:
    model = create_model("mobilenet_v2", seed=0).eval()
    model.set_lung_inputs(inputs, dilation=0.05)  # 3 px at 64 px
    lung = _lungs()
    x = torch.rand(1, 1, 64, 64)
    corner = x.clone()
    corner[..., :6, :6] = 1.0  # a bright "marker" far outside the grown mask
    corner[..., 58:, 58:] = 0.0
    inside = x.clone()
    inside[..., 24:40, 16:24] = 1.0
    with torch.no_grad():
        base, moved, changed = (model(v, lung) for v in (x, corner, inside))
        plain = model(x)  # no mask: the ordinary network
    torch.testing.assert_close(moved, base, rtol=0, atol=1e-6)
    assert not torch.allclose(changed, base, atol=1e-5)  # inside the lungs it does matter
    assert not torch.allclose(plain, base, atol=1e-5)


def test_early_gate_hooks_the_stages_up_to_stride_16_only_during_a_call() -> None:
    model = create_model("mobilenet_v2", seed=0).eval()
    model.set_lung_inputs(("early", "last"))
    stages = model.early_modules()
    assert len(stages) == 4  # strides 2, 4, 8, 16 (not the stride-32 map)
    during: list[int] = []
    stages[0].register_forward_pre_hook(
        lambda *_: during.append(sum(len(m._forward_hooks) for m in stages))
    )
    x, lung = torch.rand(1, 1, 64, 64), _lungs()
    with torch.no_grad():
        gated = model(x, lung)
        assert during == [4]
        assert sum(len(m._forward_hooks) for m in stages) == 0  # nothing kept between calls
        model.set_lung_inputs(("last",))
        assert not torch.allclose(model(x, lung), gated)
    assert during == [4, 0]
    with pytest.raises(ValueError):
        model.set_lung_inputs(("nowhere",))


def test_the_study_gate_stays_the_default() -> None:
    model = create_model("mobilenet_v2", seed=0).eval()
    x, lung = torch.rand(2, 1, 64, 64), _lungs().expand(2, -1, -1, -1)
    with torch.no_grad():
        expected = model.forward_head(gate_features(model.forward_features(x), lung))
        torch.testing.assert_close(model(x, lung), expected)
