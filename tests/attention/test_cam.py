from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cxrguide.attention.cam import (
    CAM_METHODS,
    LUNG_COLOR,
    cam_map,
    cam_overlay,
    draw_contour,
)
from cxrguide.errors import CxrGuideError
from cxrguide.models.classifier import gate_features
from cxrguide.models.zoo import create_model


@pytest.fixture(scope="module")
def model():
    return create_model("mobilenet_v2", "none", seed=0).eval()


def _image(size: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    blob = np.exp(-((yy - 0.3) ** 2 + (xx - 0.7) ** 2) / 0.01)
    return np.clip(0.4 + 0.5 * blob + rng.normal(0, 0.05, (size, size)), 0, 1).astype(np.float32)


def _oracle(model, image: np.ndarray, target: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM by hand on the feature map after the gate, scaled as pytorch-grad-cam does."""
    x = torch.from_numpy(image)[None, None]
    feats = model.forward_features(x)
    if mask is not None:
        feats = gate_features(feats, torch.from_numpy(mask.astype(np.float32))[None, None])
    feats = feats.detach().requires_grad_()
    score = model.head(feats)[0, target]
    (grad,) = torch.autograd.grad(score, feats)
    weights = grad.mean((2, 3), keepdim=True)
    cam = torch.relu((weights * feats).sum(1))[0].detach().numpy()
    cam = cam - cam.min()
    cam = cam / (cam.max() + 1e-7)
    cam = cv2.resize(cam.astype(np.float32), image.shape[::-1])
    cam = cam - cam.min()  # the library min-max scales again after resizing
    return cam / (cam.max() + 1e-7)


def test_gradcam_is_computed_on_the_feature_tap(model):
    image = _image()
    for target in (0, 2):
        heat = cam_map(model, image, target)
        assert heat.shape == image.shape and heat.dtype == np.float32
        np.testing.assert_allclose(heat, _oracle(model, image, target), atol=1e-4)
    assert all(p.grad is None for p in model.parameters())  # no .grad left behind


def test_gated_cam_sees_only_the_lungs(model):
    image = _image()
    mask = np.zeros(image.shape, bool)
    mask[:, :64] = True  # left half: the right half of the 4x4 feature grid is gated to zero
    peaks = []
    for target in range(3):
        heat = cam_map(model, image, target, mask, gate=True)
        np.testing.assert_allclose(heat, _oracle(model, image, target, mask), atol=1e-4)
        assert heat[:, -16:].max() < 1e-6
        peaks.append(heat[:, :64].max())
    assert max(peaks) > 0.9


def test_overlay_draws_heat_and_exactly_the_lung_contour(model):
    image = _image()
    mask = np.zeros(image.shape, bool)
    mask[30:100, 20:60] = True
    rgb = cam_overlay(model, image, 0, mask)
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    magenta = np.all(rgb == LUNG_COLOR, axis=-1)
    ring = np.zeros_like(mask)
    ring[30:100, 20:60] = True
    ring[31:99, 21:59] = False
    assert np.array_equal(magenta, ring)
    plain = cam_overlay(model, image, 0)
    assert not np.all(plain == LUNG_COLOR, axis=-1).any()
    heat = cam_map(model, image, 0)
    hot, cold = (
        np.unravel_index(heat.argmax(), heat.shape),
        np.unravel_index(heat.argmin(), heat.shape),
    )
    assert (
        plain[hot][0] > plain[hot][2] and plain[cold][2] > plain[cold][0]
    )  # JET: red hot, blue cold


def test_every_method_gives_a_map_and_unknown_ones_fail(model):
    image = _image(64)
    for method in CAM_METHODS:
        heat = cam_map(model, image, 1, method=method)
        assert heat.shape == (64, 64) and heat.min() >= 0 and heat.max() <= 1
    with pytest.raises(CxrGuideError, match="cam method 'scorecam' unknown"):
        cam_map(model, image, 1, method="scorecam")


def test_draw_contour_width_and_empty_mask():
    rgb = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), bool)
    assert np.array_equal(draw_contour(rgb, mask), rgb)
    mask[5:15, 5:15] = True
    edge = np.all(draw_contour(rgb, mask, width=2) == LUNG_COLOR, axis=-1)
    assert edge.sum() == 100 - 36 and not edge[7:13, 7:13].any()
