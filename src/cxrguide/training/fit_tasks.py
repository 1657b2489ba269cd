"""The Task objects :func:`cxrguide.core.engine.fit` runs: each stage's train and eval step.

Each train step reports the cross-entropy as ``loss`` and the L2 term as ``l2`` separately (so
``history.csv`` has ``train_loss`` and ``train_l2`` and the progress bar shows the same names);
the optimised objective is their sum.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrguide.attention.gain import GainSettings
from cxrguide.training.losses import L2Scope, l2_penalty, paper_cross_entropy


def _sums(logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> dict[str, float]:
    n = len(labels)
    correct = (logits.argmax(1) == labels).sum().item()
    return {"loss": loss.item() * n, "acc": correct, "n": n}


class ClassifierTask:
    """Images -> logits; the study's cross-entropy (optionally class-weighted) plus its L2 term.

    ``l2_scope``: ``head`` (the study's Keras semantics, default) or ``all``. ``class_weights``:
    one weight per class for the training loss; validation stays unweighted (as in Keras).
    """

    def __init__(
        self, l2: float, l2_scope: L2Scope = "head", class_weights: torch.Tensor | None = None
    ) -> None:
        self.l2 = l2
        self.l2_scope = l2_scope
        self.class_weights = class_weights

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["image"])

    def train_step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits(model, batch)
        ce = paper_cross_entropy(logits, batch["label"], class_weights=self.class_weights)
        l2 = l2_penalty(model, self.l2, self.l2_scope)
        sums = _sums(logits, batch["label"], ce)
        sums["l2"] = l2.item() * len(batch["label"])
        return ce + l2, sums

    def eval_step(self, model: nn.Module, batch: dict) -> dict[str, float]:
        logits = self.logits(model, batch)
        return _sums(logits, batch["label"], paper_cross_entropy(logits, batch["label"]))


class FeatureTask(ClassifierTask):
    """Stage I on cached pooled features: the model is the head alone."""

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["features"])


class Stage3Task:
    """Batches -> L = L_clas + alpha L_am + w_e L_e + lambda R (+ the study's L2 penalty)."""

    def __init__(
        self,
        settings: GainSettings,
        l2: float,
        l2_scope: str = "head",
        class_weights: torch.Tensor | None = None,
    ) -> None:
        self.settings = settings
        self.l2, self.l2_scope, self.class_weights = l2, l2_scope, class_weights

    def _terms(
        self, model: nn.Module, batch: dict, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch["image"], batch["label"], batch.get("lung"))
        ce = paper_cross_entropy(out["logits"], batch["label"], class_weights=weights)
        s = self.settings
        total = ce
        if s.gain:
            total = total + s.alpha * out["am"]
        if s.external:
            total = total + s.external_weight * out["ext"]
        if s.rrr:
            total = total + s.rrr_weight * out["rrr"]
        n = len(batch["label"])
        correct = (out["logits"].argmax(1) == batch["label"]).sum().item()
        sums = {
            "loss": total.detach().item() * n,
            "ce": ce.detach().item() * n,
            "am": out["am"].detach().item() * n,
            "ext": out["ext"].detach().item() * n,
            "acc": correct,
            "n": n,
        }
        if s.rrr:
            sums["rrr"] = out["rrr"].detach().item() * n
        return total, sums

    def train_step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        total, sums = self._terms(model, batch, self.class_weights)  # validation: unweighted
        l2 = l2_penalty(model, self.l2, self.l2_scope)  # type: ignore[arg-type]
        sums["l2"] = l2.item() * len(batch["label"])
        return total + l2, sums

    def eval_step(self, model: nn.Module, batch: dict) -> dict[str, float]:
        return self._terms(model, batch)[1]
