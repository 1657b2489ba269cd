"""The study's loss and its explicit L2 penalty (Keras-style kernel regulariser)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-7


def paper_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """L = -sum_i y_i log(p_i + eps), averaged over the batch (the study's loss).

    The epsilon inside the log is what Keras' categorical cross-entropy does; it bounds the loss
    when a probability underflows, which is why the study states it.
    """
    probs = F.softmax(logits.float(), dim=1)
    picked = probs.gather(1, target.view(-1, 1)).squeeze(1)
    return -(picked + eps).log().mean()


def l2_penalty(module: nn.Module, lam: float) -> torch.Tensor:
    """lam * sum of squared trainable weights (kernels only, as Keras' kernel_regularizer).

    Added to the loss rather than used as SGD weight decay so the value is the study's
    lambda whatever the optimiser; biases and normalisation parameters are not penalised.
    """
    terms = [p.pow(2).sum() for p in module.parameters() if p.requires_grad and p.ndim > 1]
    if not terms or lam == 0:
        return torch.zeros((), device=next(module.parameters()).device)
    return lam * torch.stack(terms).sum()
