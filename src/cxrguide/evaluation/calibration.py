"""Calibration and selective prediction: ECE, Brier, temperature scaling, risk-coverage.

scikit-learn has no expected calibration error, so it is written here, small and tested against
hand computations; ``bench sources`` and ``evaluate`` both use it.

- ECE (Guo et al. 2017): 15 equal-width confidence bins on ``[0, 1]``; each bin's
  ``|accuracy - mean confidence|`` weighted by its share of films. Top-label ECE bins the top
  probability; classwise ECE averages, over classes, the ECE of ``p_k`` against ``y == k``.
- Brier score: the mean over films of ``sum_k (p_k - [y == k])^2`` (0 best, 2 worst).
- Temperature scaling: one scalar ``T`` minimising the NLL of ``softmax(logits / T)`` on the
  validation logits (L-BFGS on ``log T``, so ``T`` stays positive).
- Vector scaling (Guo et al. 2017): a per-class scale ``w`` and bias ``b`` minimising the NLL
  of ``softmax(w * logits + b)`` on validation (L-BFGS from the temperature solution); the
  bias is centred afterwards (softmax ignores a shared shift), so the fit is unique.
- Risk-coverage: films sorted by confidence, most confident first; at coverage ``c`` the risk is
  the error rate among the answered films. AURC is its mean over all ``c`` (lower is better).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

N_BINS = 15


def _bin_ece(conf: np.ndarray, hit: np.ndarray, n_bins: int = N_BINS) -> float:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        inside = idx == b
        if inside.any():
            total += inside.mean() * abs(hit[inside].mean() - conf[inside].mean())
    return float(total)


def ece(y: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label expected calibration error (bins ``(i/n, (i+1)/n]``, the first also holds 0)."""
    probs = np.asarray(probs, np.float64)
    return _bin_ece(probs.max(1), (probs.argmax(1) == np.asarray(y)).astype(float), n_bins)


def ece_interval(
    y: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> list[float]:
    """95% percentile bootstrap interval of the top-label ECE (films resampled): on ~90 test
    films the ECE itself is noisy, and a before -> after difference smaller than this is not
    evidence."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    conf, hit = probs.max(1), (probs.argmax(1) == y).astype(float)
    rng = np.random.default_rng(seed)
    draws = [_bin_ece(conf[i], hit[i]) for i in rng.integers(0, len(y), (n_boot, len(y)))]
    return [float(v) for v in np.quantile(draws, [0.025, 0.975])]


def ece_floor(probs: np.ndarray, n_sims: int = 500, seed: int = 0) -> dict[str, float]:
    """The top-label ECE a *perfectly calibrated* model with these probabilities would show on
    this many films: labels drawn from the probabilities themselves, ``n_sims`` times.

    Binned ECE is biased upwards on small splits (each bin's accuracy is a noisy mean), so an
    observed ECE inside this floor's range cannot be told from perfect calibration: on 195 films
    of real CXRs the mean floor was 0.066 (docs/calibration.md)."""
    probs = np.asarray(probs, np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    conf, top = probs.max(1), probs.argmax(1)
    cum = np.cumsum(probs, 1)
    rng = np.random.default_rng(seed)
    draws = rng.random((n_sims, len(probs), 1))
    labels = (draws > cum[None]).sum(2).clip(max=probs.shape[1] - 1)  # (n_sims, films)
    sims = np.array([_bin_ece(conf, (lab == top).astype(float)) for lab in labels])
    return {"mean": float(sims.mean()), "hi95": float(np.quantile(sims, 0.95))}


def ece_classwise(y: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> float:
    """Mean over classes of the ECE of ``p_k`` as the probability of ``y == k``."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    return float(
        np.mean(
            [_bin_ece(probs[:, k], (y == k).astype(float), n_bins) for k in range(probs.shape[1])]
        )
    )


def brier(y: np.ndarray, probs: np.ndarray) -> float:
    probs = np.asarray(probs, np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(y)]
    return float(((probs - onehot) ** 2).sum(1).mean())


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    p = np.asarray(probs, np.float64)[np.arange(len(y)), np.asarray(y)]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def reliability_bins(y: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> dict[str, list]:
    """Per-bin mean confidence, accuracy and count of the top label (the reliability diagram)."""
    probs = np.asarray(probs, np.float64)
    conf, hit = probs.max(1), (probs.argmax(1) == np.asarray(y)).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        inside = idx == b
        out["count"].append(int(inside.sum()))
        out["confidence"].append(float(conf[inside].mean()) if inside.any() else None)
        out["accuracy"].append(float(hit[inside].mean()) if inside.any() else None)
    return out


def fit_temperature(logits: np.ndarray, y: np.ndarray, max_iter: int = 200) -> float:
    """The scalar T minimising validation NLL of ``softmax(logits / T)`` (L-BFGS on log T)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    target = torch.as_tensor(np.asarray(y), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 100.0))  # bounded: never 0 or infinite


def fit_vector_scaling(
    logits: np.ndarray, y: np.ndarray, max_iter: int = 500, init_temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class ``(w, b)`` minimising validation NLL of ``softmax(w * logits + b)``; ``w``
    bounded to ``[0.01, 100]`` (never 0 or infinite), ``b`` centred."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    target = torch.as_tensor(np.asarray(y), dtype=torch.long)
    k = z.shape[1]
    w = torch.full((k,), 1.0 / init_temperature, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * w + b, target)
        loss.backward()
        return loss

    opt.step(closure)
    scale = np.clip(w.detach().numpy(), 0.01, 100.0)
    bias = b.detach().numpy()
    return scale, bias - bias.mean()


def risk_coverage(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Coverage and selective risk after each film (most confident first) and their AURC."""
    probs = np.asarray(probs, np.float64)
    order = np.argsort(-probs.max(1), kind="stable")
    errors = (probs.argmax(1) != np.asarray(y))[order].astype(float)
    n = np.arange(1, len(errors) + 1)
    risk = np.cumsum(errors) / n
    return n / len(errors), risk, float(risk.mean())


def confidence_threshold(y: np.ndarray, probs: np.ndarray, target_risk: float) -> float:
    """The lowest top probability at which the answered validation films' error rate stays
    <= ``target_risk`` (so coverage is the largest that meets it); where no coverage meets it,
    the threshold of the lowest risk (ties: the larger coverage)."""
    conf = np.asarray(probs, np.float64).max(1)
    order = np.argsort(-conf, kind="stable")
    _, risk, _ = risk_coverage(y, probs)
    # only cut between distinct confidences: films of equal confidence are answered together
    cuts = np.flatnonzero(np.r_[conf[order][1:] < conf[order][:-1], True])
    ok = cuts[risk[cuts] <= target_risk]
    if len(ok):
        return float(conf[order][ok[-1]])
    best = cuts[np.flatnonzero(risk[cuts] == risk[cuts].min())[-1]]
    return float(conf[order][best])


def selective_section(
    y: np.ndarray, probs: np.ndarray, answered: np.ndarray | None = None, points: int = 21
) -> dict[str, Any]:
    """AURC, the risk-coverage curve at ``points`` coverages, and (given ``answered``, the films
    ``--abstain`` would answer) the coverage next to the accuracy on the answered films."""
    coverage, risk, aurc = risk_coverage(y, probs)
    grid = np.linspace(1.0 / len(y), 1.0, points)
    at = np.clip(np.searchsorted(coverage, grid - 1e-12), 0, len(y) - 1)
    out: dict[str, Any] = {
        "aurc": aurc,
        "curve": {
            "coverage": [float(c) for c in coverage[at]],
            "risk": [float(r) for r in risk[at]],
        },
    }
    if answered is not None:
        answered = np.asarray(answered, bool)
        hit = np.asarray(probs).argmax(1) == np.asarray(y)
        out["abstain"] = {
            "coverage": float(answered.mean()),
            "accuracy_answered": float(hit[answered].mean()) if answered.any() else None,
            "accuracy_all": float(hit.mean()),
        }
    return out
