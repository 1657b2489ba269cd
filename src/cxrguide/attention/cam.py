"""Grad-CAM overlays for people: where the classifier looked, with the lungs outlined.

pytorch-grad-cam computes the map on :attr:`CxrClassifier.feature_tap`, the identity after the
(optional) lung gate, i.e. the exact map the head reads; it is fine for pictures and unusable
inside training (see LIBRARY_NOTES.md). The heatmap is drawn in the JET colormap over the gray
film and the lung contour in magenta, a colour JET never produces, so the outline stays visible
on any heat.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from cxrguide.config.inference import CAM_METHODS
from cxrguide.errors import CxrGuideError

LUNG_COLOR = (255, 0, 255)


class _Gated(nn.Module):
    """``model(x, mask)`` as a one-input module, for CAM libraries that call ``model(x)``."""

    def __init__(self, model: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.mask)


def _as_batch(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[:2] != (1, 1):
        raise ValueError(f"expected one gray image (H, W), got {tuple(t.shape)}")
    return t.to(device)


def library_class(method: str) -> type:
    """The pytorch-grad-cam class of a method name: its class name lower-cased, "PlusPlus" as
    "++" (GradCAMPlusPlus -> gradcam++), so the names need declaring only once (in config)."""
    import pytorch_grad_cam

    for name in dir(pytorch_grad_cam):
        if name.lower().replace("plusplus", "++") == method:
            return getattr(pytorch_grad_cam, name)
    raise CxrGuideError(f"cam method {method!r}: pytorch-grad-cam has no such class")


def cam_map(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    target: int | None = None,
    lung: np.ndarray | torch.Tensor | None = None,
    method: str = "gradcam",
    *,
    gate: bool = False,
) -> np.ndarray:
    """Class-activation map ``(H, W)`` in [0, 1] for one gray image in [0, 1].

    ``target`` is a class index (default: the predicted class). ``lung`` is the image's lung
    mask; it enters the forward pass only when ``gate`` (the run was trained with the gate).
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in CAM_METHODS:
        raise CxrGuideError(
            f"cam method {method!r} unknown; choose one of {', '.join(CAM_METHODS)}"
        )
    tap = getattr(model, "feature_tap", None)
    if tap is None:
        raise ValueError("model has no feature_tap (expected a CxrClassifier)")
    device = next(model.parameters()).device
    x = _as_batch(image, device)
    net: nn.Module = model
    if gate:
        if lung is None:
            raise ValueError("gate=True needs the lung mask")
        net = _Gated(model, _as_batch(lung, device))
    was_training = model.training
    cam_class = library_class(method)
    try:
        with torch.inference_mode(False), torch.enable_grad(), cam_class(net, [tap]) as cam:
            targets = None if target is None else [ClassifierOutputTarget(int(target))]
            heat = cam(input_tensor=x, targets=targets)[0]
    finally:
        model.zero_grad(set_to_none=True)  # the library leaves .grad on the parameters
        model.train(was_training)
    return np.nan_to_num(np.asarray(heat, dtype=np.float32)).clip(0.0, 1.0)


def draw_contour(
    rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = LUNG_COLOR, width: int = 1
) -> np.ndarray:
    """Draw the outline (inner border, ``width`` px) of a bool mask onto an RGB uint8 copy."""
    out = rgb.copy()
    mask = np.asarray(mask) > 0.5 if np.asarray(mask).dtype != np.bool_ else np.asarray(mask)
    if mask.any():
        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, width), border_value=0)
        out[edge] = color
    return out


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The gray film with a JET heatmap blended in (``alpha`` = heat weight), RGB uint8."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    return show_cam_on_image(rgb, heat, use_rgb=True, image_weight=1.0 - alpha)


def cam_overlay(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    target: int | None = None,
    lung: np.ndarray | torch.Tensor | None = None,
    method: str = "gradcam",
    *,
    gate: bool = False,
    alpha: float = 0.45,
) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``: the image, its Grad-CAM heatmap and (if given) the lung contour."""
    heat = cam_map(model, image, target, lung, method, gate=gate)
    gray = np.asarray(image, dtype=np.float32).reshape(heat.shape)
    rgb = heat_overlay(gray, heat, alpha)
    if lung is not None:
        mask = np.asarray(lung, dtype=np.float32).reshape(heat.shape) > 0.5
        rgb = draw_contour(rgb, mask, width=max(1, min(heat.shape) // 160))
    return rgb
