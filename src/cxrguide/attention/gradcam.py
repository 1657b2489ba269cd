"""Differentiable Grad-CAM: the attention map Stage III trains on and evaluation measures.

For class c with score s^c (the logit, as pytorch-grad-cam's ``ClassifierOutputTarget``) and
the last conv map F (B, K, h, w), the weights are w^c_k = mean_ij d s^c / d F_kij and the map
A^c = ReLU(sum_k w^c_k F_k). It is min-max normalised per image, bilinearly upsampled to the
input size and normalised again: exactly pytorch-grad-cam's ``GradCAM`` post-processing, so our
maps equal the ones the figures show (tests check it to ~1e-5).

Unlike pytorch-grad-cam this stays in autograd: ``torch.autograd.grad`` is called out of place
(no ``.grad`` left on parameters, works inside a DDP forward) and, with ``create_graph=True``,
a loss on A^c back-propagates into the weights w^c too (GAIN's exact second-order term; with
``create_graph=False`` the weights are constants and only F carries gradient, as public GAIN
ports do). Because F is the *last* conv map, d s^c / d F only runs back through the head, so the
double backward is cheap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-7  # pytorch-grad-cam's scale_cam_image epsilon


def cam_weights(
    features: torch.Tensor, scores: torch.Tensor, *, create_graph: bool = True
) -> torch.Tensor:
    """w^c (B, K, 1, 1): spatial mean of d s^c / d F for each image's own score ``scores[b]``.

    ``scores`` (B,) must be computed from ``features`` (B, K, h, w); images of a batch are
    independent, so the gradient of their sum gives each image its own gradient.
    """
    if not features.requires_grad:
        raise ValueError("features must require grad (make them a leaf with requires_grad_())")
    (grad,) = torch.autograd.grad(
        scores.sum(), features, create_graph=create_graph, retain_graph=True
    )
    return grad.mean(dim=(2, 3), keepdim=True)


def normalize_cam(cam: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-image min-max to [0, 1] over the last two dims (pytorch-grad-cam's scaling)."""
    flat = cam.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values
    flat = flat - lo
    hi = flat.max(dim=-1, keepdim=True).values
    return (flat / (hi + eps)).reshape(cam.shape)


def grad_cam(
    features: torch.Tensor,
    scores: torch.Tensor,
    size: tuple[int, int] | None = None,
    *,
    create_graph: bool = True,
) -> torch.Tensor:
    """A^c (B, 1, H, W) in [0, 1] from feature map ``features`` and per-image ``scores``.

    ``size``: the (H, W) to upsample to (bilinear, half-pixel centres like OpenCV); ``None``
    keeps the feature grid. The result carries gradient to ``features`` (and, with
    ``create_graph``, through the weights) whenever autograd is on.
    """
    weights = cam_weights(features, scores, create_graph=create_graph)
    cam = F.relu((weights * features).sum(dim=1, keepdim=True))
    cam = normalize_cam(cam.float())
    if size is not None and tuple(cam.shape[-2:]) != tuple(size):
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
        cam = normalize_cam(cam)
    return cam


def tapped_features(
    model: nn.Module, images: torch.Tensor, lung_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The map Grad-CAM reads: last conv map, with the lung mask applied where the model's
    ``lung_inputs`` say (the study's gate: the last map) if given, requiring grad.

    When the body is frozen or autograd was off for the body, the map becomes a leaf that
    requires grad (so d s / d F exists; nothing flows further back, as nothing should).
    """
    feats = model.lung_features(images, lung_mask)
    if not feats.requires_grad:
        feats = feats.detach().requires_grad_()
    return feats


def model_cam(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor | None = None,
    lung_mask: torch.Tensor | None = None,
    *,
    differentiable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K) and Grad-CAM (B, 1, H, W) of a :class:`CxrClassifier` for ``target``.

    ``target`` (B,) class indices; ``None`` explains each image's predicted class.
    ``differentiable=False`` (evaluation, figures) runs the body without a graph and returns
    detached tensors, at the cost of one forward and a head-only backward;
    ``differentiable=True`` keeps the full graph with ``create_graph`` for a loss on the map.
    """
    with torch.enable_grad():
        if differentiable:
            feats = tapped_features(model, images, lung_mask)
        else:
            with torch.no_grad():
                feats = model.lung_features(images, lung_mask)
            feats = feats.detach().requires_grad_()
        logits = model.forward_head(feats)
        if target is None:
            target = logits.detach().argmax(dim=1)
        scores = logits.gather(1, target.view(-1, 1).to(logits.device)).squeeze(1)
        cam = grad_cam(feats, scores, tuple(images.shape[-2:]), create_graph=differentiable)
    if not differentiable:
        return logits.detach(), cam.detach()
    return logits, cam
