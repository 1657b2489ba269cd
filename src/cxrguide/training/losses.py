"""The study's loss, its explicit L2 penalty (Keras-style kernel regulariser) and class weights."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrguide.errors import ConfigError
from cxrguide.models.head import PaperHead

EPS = 1e-7
L2Scope = Literal["head", "all"]


def paper_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = EPS,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """L = -sum_i y_i log(p_i + eps), averaged over the batch (the study's loss).

    The epsilon inside the log is what Keras' categorical cross-entropy does; it bounds the loss
    when a probability underflows, which is why the study states it. ``class_weights`` (one per
    class) scale each image's term as Keras' ``class_weight`` does: the batch mean of
    ``w[y] * loss``, not normalised by the weights' sum.
    """
    probs = F.softmax(logits.float(), dim=1)
    picked = probs.gather(1, target.view(-1, 1)).squeeze(1)
    per_image = -(picked + eps).log()
    if class_weights is not None:
        per_image = per_image * class_weights.to(per_image.device)[target]
    return per_image.mean()


def _head_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, PaperHead)]


def penalised_kernels(module: nn.Module, scope: L2Scope = "all") -> Iterator[nn.Parameter]:
    """Trainable kernels (ndim > 1) the L2 term covers: the head's only, or every layer's.

    ``head`` is the study's Keras semantics (a kernel regulariser sits on the layers it is given:
    the head's Dense layers); a module without a :class:`PaperHead` (the head alone in Stage I)
    is all head. ``all`` also penalises every trainable body kernel.
    """
    if scope not in ("head", "all"):
        raise ConfigError(f"l2_scope: {scope!r} is not one of 'head', 'all'")
    owners = (_head_modules(module) or [module]) if scope == "head" else [module]
    for owner in owners:
        for p in owner.parameters():
            if p.requires_grad and p.ndim > 1:
                yield p


def l2_penalty(module: nn.Module, lam: float, scope: L2Scope = "all") -> torch.Tensor:
    """lam * sum of squared trainable kernels in ``scope`` (see :func:`penalised_kernels`).

    Added to the loss rather than used as SGD weight decay so the value is the study's
    lambda whatever the optimiser; biases and normalisation parameters are not penalised.
    """
    terms = [p.pow(2).sum() for p in penalised_kernels(module, scope)]
    if not terms or lam == 0:
        return torch.zeros((), device=next(module.parameters()).device)
    return lam * torch.stack(terms).sum()


def balanced_class_weights(labels: np.ndarray, num_classes: int = 3) -> torch.Tensor:
    """w_c = N / (K * n_c) over the training labels (scikit-learn's ``balanced``); a class with
    no training image gets weight 0 (it never appears in a batch anyway)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def balanced_sample_weights(labels: np.ndarray, num_classes: int = 3) -> torch.Tensor:
    """Per-image sampling weights 1 / n_class: every class is drawn equally often."""
    return group_sample_weights(np.asarray(labels, dtype=np.int64))


def group_sample_weights(groups: np.ndarray) -> torch.Tensor:
    """Per-image sampling weights 1 / n_group: every group present is drawn equally often.

    With groups = class x source this removes the class-source correlation from the training
    batches (a source that supplies only COVID-19 films no longer makes "this hospital" a
    COVID-19 feature), the sampling form of group-balanced training (Sagawa et al. 2020).
    """
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    return torch.tensor(1.0 / counts[inverse].astype(np.float64), dtype=torch.double)
