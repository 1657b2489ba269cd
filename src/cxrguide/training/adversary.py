"""Domain-adversarial training against the source (DANN, Ganin & Lempitsky, ICML 2015).

A small source classifier (the *adversary*) reads the pooled penultimate features, the same
features the cross-source study's source probe reads, through a gradient-reversal layer. The
adversary learns to tell the sources apart; the reversed gradient pushes the body to make them
indistinguishable, so a feature that says "this hospital" costs the classifier.

Composable with any fine-tuning task: :class:`AdversarialNet` wraps the network the task drives
(a :class:`~cxrguide.models.classifier.CxrClassifier` or Stage III's ``GuidedAttention``) and
taps the classifier's ``feature_tap`` (the first pass of a step: the clean one, before GAIN's
erased pass); :class:`AdversaryTask` adds the adversary's cross-entropy to the wrapped task's
objective. The adversary lives inside the wrapped network, so ``last.pt`` holds its weights and
its step counter, and a resumed run continues the ramp where it stopped; the saved run
(``model.pt``) is the classifier alone.

The reversal strength follows DANN's schedule ``lambda_p = 2 / (1 + exp(-10 p)) - 1`` (p: share
of the training steps done), times ``--adversary-weight``: near 0 while the adversary is still
random, near the weight at the end.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrguide.core.engine import unwrap
from cxrguide.errors import ConfigError

ADVERSARY_WIDTH = 128  # hidden units of the source classifier (one hidden layer)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the backward gradient times ``-scale``."""
    return _GradReverse.apply(x, float(scale))


def dann_lambda(progress: float) -> float:
    """DANN's ramp 2 / (1 + exp(-10 p)) - 1 for p in [0, 1] (clipped): 0 at p=0, ~1 at p=1."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


class SourceAdversary(nn.Module):
    """Pooled features (B, C) -> source logits (B, S); one hidden ReLU layer.

    ``step`` (a buffer, so checkpoints carry it) counts the training steps taken: the ramp's p.
    """

    def __init__(self, in_features: int, num_sources: int, width: int = ADVERSARY_WIDTH):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, num_sources)
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, pooled: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.mlp(grad_reverse(pooled, scale))


class AdversarialNet(nn.Module):
    """``net`` (what the task calls) plus the adversary on ``classifier.feature_tap``.

    ``forward`` is ``net``'s; the first feature map through the tap in that call is kept for
    :meth:`pooled`.
    """

    def __init__(self, net: nn.Module, classifier: nn.Module, adversary: SourceAdversary):
        super().__init__()
        self.net = net
        self.adversary = adversary
        self._taps: list[torch.Tensor] = []
        classifier.feature_tap.register_forward_hook(self._tap)

    def _tap(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not self._taps:
            self._taps.append(output)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._taps.clear()
        return self.net(*args, **kwargs)

    def pooled(self) -> torch.Tensor:
        """The pooled features (B, C) of the last forward's first pass."""
        if not self._taps:
            raise RuntimeError("no features tapped: call forward first")
        feats = self._taps[0]
        return feats.mean(dim=(2, 3)) if feats.dim() == 4 else feats


def source_codes(names: np.ndarray, train_rows: np.ndarray) -> tuple[torch.Tensor, list[str]]:
    """Per manifest row the index of its source among the training rows' sources (sorted), -1
    for a source absent from training (a held-out one); and those sources' names."""
    names = np.asarray(names).astype(str)
    known = sorted(set(names[np.asarray(train_rows)]))
    if len(known) < 2:
        raise ConfigError(
            f"adversary: the training split holds one source only ({', '.join(known)}); "
            "an adversary against the source needs at least two"
        )
    index = {s: i for i, s in enumerate(known)}
    codes = torch.tensor([index.get(s, -1) for s in names], dtype=torch.long)
    return codes, known


class AdversaryTask:
    """``inner``'s objective plus the adversary's source cross-entropy (behind the reversal).

    History gains ``adv`` (the adversary's cross-entropy), ``adv_acc`` (its accuracy) and, for
    training, ``adv_lambda`` (the reversal strength). Validation's ``loss`` stays ``inner``'s:
    early stopping watches the classifier, not the minimax game.
    """

    def __init__(self, inner: Any, codes: torch.Tensor, weight: float, total_steps: int) -> None:
        self.inner, self.codes = inner, codes
        self.weight, self.total_steps = float(weight), max(int(total_steps), 1)

    def _adversary(self, model: nn.Module, batch: dict, scale: float):
        model = unwrap(model)  # under torchrun the engine hands in the DDP wrapper
        target = self.codes.to(batch["index"].device)[batch["index"]]
        known = target >= 0
        logits = model.adversary(model.pooled()[known], scale)
        n = len(target)
        if not known.any():
            return logits.sum() * 0.0, {"adv": 0.0, "adv_acc": 0.0}
        loss = F.cross_entropy(logits.float(), target[known])
        correct = (logits.argmax(1) == target[known]).float().mean().item()
        return loss, {"adv": loss.item() * n, "adv_acc": correct * n}

    def train_step(self, model: AdversarialNet, batch: dict) -> tuple[torch.Tensor, dict]:
        loss, sums = self.inner.train_step(model, batch)
        counter = unwrap(model).adversary.step
        scale = self.weight * dann_lambda(int(counter) / self.total_steps)
        adv, adv_sums = self._adversary(model, batch, scale)
        counter += 1
        sums.update(adv_sums, adv_lambda=scale * len(batch["label"]))
        return loss + adv, sums

    def eval_step(self, model: AdversarialNet, batch: dict) -> dict[str, float]:
        sums = self.inner.eval_step(model, batch)
        with torch.no_grad():
            sums.update(self._adversary(model, batch, 0.0)[1])
        return sums
