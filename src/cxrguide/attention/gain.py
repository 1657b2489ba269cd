"""Stage III's guided attention: lung gate, GAIN attention mining, external supervision.

GAIN (Li et al., CVPR 2018) in the form the study uses:

- Grad-CAM A^c of the *true* class c on the (gated) last conv map, kept differentiable
  (:mod:`cxrguide.attention.gradcam`).
- Soft mask T(A) = sigmoid(omega (A - sigma)); erased image I* = I - T(A) I.
- I* goes through the same network (shared weights); L_am = mean true-class softmax score on
  I*. If the class is still visible after its attended region is erased, attention missed
  evidence. Erased images never enter BatchNorm's running statistics. ``erased_bn`` says how
  BatchNorm behaves when GAIN is on:

  - ``"frozen"`` (default): every BatchNorm layer stays in eval mode for all of Stage III, at
    the statistics of the run it fine-tunes: the network trained is exactly the network
    evaluated, and both passes are normalised alike.
  - ``"clean"``: BatchNorm trains as usual on the clean pass; the erased pass is normalised
    with that clean batch's statistics.
  - ``"eval"``: BatchNorm trains as usual; the erased pass uses the running statistics (the
    literal "BatchNorm in eval for that pass" recipe).

  Why ``"frozen"``: in the shortcut benchmark ``"clean"`` and ``"eval"`` both made the
  eval-mode network collapse (validation cross-entropy 4-11 and chance accuracy, while
  batch-statistics accuracy stayed 70-95%, from random weights and within one epoch of
  fine-tuning a Stage II run): GAIN's loss makes the network so sensitive that the small
  running-vs-batch statistics gap flips its predictions. Frozen BatchNorm has no such gap.
- Optional external supervision L_e = mean (A - H)^2 with H the lung mask.

Total loss (built by the Stage III task): L = L_clas + alpha L_am + omega_e L_e (+ lambda R).

Beyond the study (they change the decision, not only the map; see README's shortcut benchmark):

- ``early-gate``: the lung mask, grown by ``dilation`` of the side, multiplies every feature map
  of stride <= 16 (:meth:`CxrClassifier.set_lung_inputs`), so cells that see a marker outside
  the lungs are zeroed before they mix with lung cells.
- ``lung-input``: the film is blanked outside the grown mask before the body.
- ``rrr`` ("Right for the Right Reasons", Ross, Hughes, Doshi-Velez 2017):
  R = mean_b sum_pixels ((1 - M) d log p_y / d x)^2 with M the grown mask; a training-only term
  (the network takes no mask at inference), which costs a double backward through the body.

:class:`GuidedAttention` wraps a :class:`CxrClassifier` so that both passes and the
``autograd.grad`` call happen inside one ``forward``: DDP then sees one ordinary backward.
Every mechanism is a switch, so ablations are one flag.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrguide.attention.gradcam import grad_cam, tapped_features
from cxrguide.config.training import MECHANISMS, parse_attention  # noqa: F401  (re-exported)
from cxrguide.errors import ConfigError


@dataclass(frozen=True)
class GainSettings:
    """Which mechanisms are on and GAIN's constants (defaults: GAIN's own values)."""

    gate: bool = True
    gain: bool = True
    external: bool = False
    alpha: float = 1.0  # weight of L_am
    sigma: float = 0.5  # soft-mask threshold
    omega: float = 10.0  # soft-mask sharpness
    external_weight: float = 1.0  # weight of L_e (GAIN's omega_e)
    second_order: bool = True  # exact create_graph; False treats the CAM weights as constants
    erased_bn: str = "frozen"  # BatchNorm with GAIN: "frozen" | "clean" | "eval" (see module doc)
    early_gate: bool = False
    lung_input: bool = False
    rrr: bool = False
    rrr_weight: float = 0.01  # lambda (10 destroyed a marker-reading model in one epoch)
    dilation: float = 0.03  # share of the side the lung mask grows by (early-gate, lung-input, rrr)

    @classmethod
    def from_names(cls, names: Iterable[str], **kw) -> GainSettings:
        names = parse_attention(names)
        return cls(
            gate="gate" in names,
            gain="gain" in names,
            external="external" in names,
            early_gate="early-gate" in names,
            lung_input="lung-input" in names,
            rrr="rrr" in names,
            **kw,
        )

    @property
    def lung_inputs(self) -> tuple[str, ...]:
        """Where the network itself applies the lung mask (``CxrClassifier.LUNG_INPUTS``)."""
        return tuple(
            name
            for name, on in (
                ("input", self.lung_input),
                ("early", self.early_gate),
                ("last", self.gate),
            )
            if on
        )

    @property
    def needs_lungs(self) -> bool:
        return self.gate or self.external or self.strict_lungs

    @property
    def strict_lungs(self) -> bool:
        """Mechanisms for which an empty lung mask means "nothing to learn from": such images
        are skipped with a counted reason (the study's gate keeps its own behaviour)."""
        return self.early_gate or self.lung_input or self.rrr

    @property
    def needs_cam(self) -> bool:
        return self.gain or self.external


def soft_mask(cam: torch.Tensor, sigma: float = 0.5, omega: float = 10.0) -> torch.Tensor:
    """T(A) = 1 / (1 + exp(-omega (A - sigma)))."""
    return torch.sigmoid(omega * (cam - sigma))


def erase(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """I* = I - T(A) I: the attended region removed (set towards 0, i.e. black)."""
    return images - mask * images


def attention_mining_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean softmax score of the true class on the erased images (GAIN's Eq. 5)."""
    probs = F.softmax(logits.float(), dim=1)
    return probs.gather(1, target.view(-1, 1)).mean()


def external_loss(cam: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """L_e = mean (A - H)^2, H the guidance mask (the lung mask) at the map's size."""
    if guide.shape[-2:] != cam.shape[-2:]:
        guide = F.interpolate(guide.float(), size=cam.shape[-2:], mode="area")
    return (cam - guide.to(cam.dtype)).pow(2).mean()


def input_gradient_penalty(
    images: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    outside: torch.Tensor,
    *,
    create_graph: bool,
) -> torch.Tensor:
    """R = mean over images of sum over pixels of (outside * d log p_y / d x)^2.

    ``images`` must require grad and ``logits`` be computed from them; ``outside`` is 1 where
    the network should not look (outside the grown lung mask), 0 inside.
    """
    logp = F.log_softmax(logits.float(), dim=1).gather(1, labels.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(logp, images, create_graph=create_graph, retain_graph=True)
    return (outside.to(grad.dtype) * grad).pow(2).sum(dim=(1, 2, 3)).mean()


def _training_bn(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]


@contextmanager
def batchnorm_eval(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers in eval mode inside the block (running stats used, not updated)."""
    changed = _training_bn(module)
    for m in changed:
        m.eval()
    try:
        yield
    finally:
        for m in changed:
            m.train()


@contextmanager
def record_batch_stats(module: nn.Module, store: dict) -> Iterator[None]:
    """Store each training-mode BatchNorm layer's batch mean and (biased) variance."""

    def hook(m: nn.Module, args: tuple) -> None:
        x = args[0].detach().float()
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], unbiased=False)
        store[m] = (mean, var)

    handles = [m.register_forward_pre_hook(hook) for m in _training_bn(module)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def batchnorm_with_stats(module: nn.Module, store: dict) -> Iterator[None]:
    """BatchNorm layers normalise with ``store``'s statistics and update nothing.

    The layers run in eval mode with their running buffers swapped (not overwritten: autograd
    keeps the swapped-in tensors for backward) for the recorded ones, so layer subclasses that
    fuse an activation (timm's BatchNormAct2d) keep working.
    """
    layers = [m for m in _training_bn(module) if m in store]
    saved = [(m.running_mean, m.running_var) for m in layers]
    for m in layers:
        m.running_mean, m.running_var = store[m]
        m.eval()
    try:
        yield
    finally:
        for m, (mean, var) in zip(layers, saved, strict=True):
            m.running_mean, m.running_var = mean, var
            m.train()


class GuidedAttention(nn.Module):
    """A classifier plus the Stage III passes; ``forward`` returns every term of the loss.

    ``forward(images, labels, lung)`` -> dict with ``logits`` (plain pass), ``cam`` (true-class
    Grad-CAM at input size, when GAIN or external supervision is on), ``am`` (L_am) and ``ext``
    (L_e) as scalars (0 when off). In eval mode (validation) the map is computed without the
    second-order graph and the erased pass without any graph: no backward follows.
    """

    def __init__(self, model: nn.Module, settings: GainSettings) -> None:
        super().__init__()
        if settings.erased_bn not in ("frozen", "clean", "eval"):
            raise ConfigError(f"gain_bn: {settings.erased_bn!r} is not frozen, clean or eval")
        self.model = model
        self.settings = settings
        model.set_lung_inputs(settings.lung_inputs, settings.dilation)

    def train(self, mode: bool = True) -> GuidedAttention:
        """With GAIN and ``erased_bn="frozen"`` BatchNorm stays in eval mode while training."""
        super().train(mode)
        if mode and self.settings.gain and self.settings.erased_bn == "frozen":
            for m in _training_bn(self):
                m.eval()
        return self

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, lung: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        s = self.settings
        if s.needs_lungs and lung is None:
            raise ValueError("the lung gate / external supervision need lung masks")
        gate = lung if s.lung_inputs else None
        zero = images.new_zeros(())
        train = self.training and torch.is_grad_enabled()
        if s.rrr:
            return self._with_rrr(images, labels, lung, gate, train)
        if not s.needs_cam:
            return {"logits": self.model(images, gate), "am": zero, "ext": zero}
        return self._gain_terms(images, labels, lung, gate, train)

    def _with_rrr(self, images, labels, lung, gate, train) -> dict[str, torch.Tensor]:
        """The other terms plus R, the input-gradient penalty outside the grown lung mask."""
        s = self.settings
        with torch.enable_grad():
            x = images.detach().requires_grad_()
            if s.needs_cam:
                out = self._gain_terms(x, labels, lung, gate, train)
                logits = out["logits"] if train else self.model(x, gate)
            else:
                logits = self.model(x, gate)
                out = {"logits": logits, "am": x.new_zeros(()), "ext": x.new_zeros(())}
            wide = self.model.wide_mask(lung.to(x.dtype), x.shape[-1])
            out["rrr"] = input_gradient_penalty(x, logits, labels, 1 - wide, create_graph=train)
        if not train:
            out = {k: v.detach() for k, v in out.items()}
        return out

    def _gain_terms(self, images, labels, lung, gate, train) -> dict[str, torch.Tensor]:
        s = self.settings
        zero = images.new_zeros(())
        stats: dict = {}  # BatchNorm layer -> the clean batch's (mean, var)
        record = s.gain and s.erased_bn == "clean"
        with torch.enable_grad():  # validation runs under no_grad; Grad-CAM needs gradients
            if train:
                with record_batch_stats(self.model, stats) if record else nullcontext():
                    feats = tapped_features(self.model, images, gate)
            else:  # d s / d F only needs the head: no graph through the body
                with torch.no_grad():
                    feats = tapped_features(self.model, images, gate)
                feats = feats.detach().requires_grad_()
            logits = self.model.forward_head(feats)
            scores = logits.gather(1, labels.view(-1, 1)).squeeze(1)
            cam = grad_cam(
                feats, scores, tuple(images.shape[-2:]), create_graph=train and s.second_order
            )
        if not train:
            logits, cam = logits.detach(), cam.detach()
        out = {"logits": logits, "cam": cam, "am": zero, "ext": zero}
        if s.gain:
            erased = erase(images, soft_mask(cam, s.sigma, s.omega))
            norm = batchnorm_with_stats(self.model, stats) if record else batchnorm_eval(self.model)
            with norm, torch.set_grad_enabled(train):
                out["am"] = attention_mining_loss(self.model(erased, gate), labels)
        if s.external:
            out["ext"] = external_loss(cam, lung)
        return out
