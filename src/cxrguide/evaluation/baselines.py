"""What a model must beat, and loud warnings when it does not.

Mixed-source chest X-ray sets are confounded: a source often contributes mostly (or only) one
class, so "predict each source's most common class" scores well without looking at a lung
(DeGrave et al., Nature Machine Intelligence 2021). Every ``metrics_<split>.json`` therefore
carries two baselines fitted on the *train* split and applied to the evaluated split:

- ``majority``: the train split's most common class for every image;
- ``source_prior``: each source's (manifest ``site``) most common train class; a source absent
  from train falls back to the majority class;

with the model's accuracy margin over each (paired bootstrap 95% CI: the same image resamples
score model and baseline). ``warnings`` lists what a reader must not miss:

- ``single_class_predictions``: >= 95% of predictions are one class (a collapsed model);
- ``below_baseline``: accuracy not above the better baseline's 95% CI upper bound (its point
  value when no bootstrap was run);
- ``attention_uninformative``: attention metrics (lung energy, pointing game) of a model whose
  predictions do not vary: they describe where a constant model's Grad-CAM lands, nothing more.

Per-source rows get their class mix and a Wilson 95% interval for accuracy, which stays wide for
small n (3 of 3 correct is [43.9%, 100%], not "100%").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from cxrguide.data.audit import apply_source_rules, fit_source_rules
from cxrguide.labels import CLASSES

SINGLE_CLASS_SHARE = 0.95


def fit_baselines(manifest: pd.DataFrame) -> dict[str, Any] | None:
    """The two rules fitted on the manifest's train split (None without train rows)."""
    return fit_source_rules(manifest)


def _ci(values: list[float]) -> list[float] | None:
    return (
        [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None
    )


def baseline_report(
    y: np.ndarray,
    pred: np.ndarray,
    sites: np.ndarray,
    manifest: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``baselines`` block: each rule's accuracy (CI) and the model's margin over it (CI)."""
    rules = fit_baselines(manifest)
    if rules is None:
        return {"skipped": "the prepared set has no train split to fit the baselines on"}
    major, prior = apply_source_rules(rules, sites)
    correct = {"model": pred == y, "majority": major == y, "source_prior": prior == y}
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {k: [] for k in ("majority", "source_prior")}
    margins: dict[str, list[float]] = {k: [] for k in boot}
    for _ in range(n_boot if len(y) else 0):
        idx = rng.integers(0, len(y), len(y))
        model_acc = correct["model"][idx].mean()
        for k in boot:
            acc = correct[k][idx].mean()
            boot[k].append(float(acc))
            margins[k].append(float(model_acc - acc))
    model_acc = float(correct["model"].mean()) if len(y) else float("nan")
    out: dict[str, Any] = {}
    for k in boot:
        acc = float(correct[k].mean()) if len(y) else float("nan")
        out[k] = {
            "accuracy": acc,
            "ci95": _ci(boot[k]),
            "margin": model_acc - acc,
            "margin_ci95": _ci(margins[k]),
        }
    out["majority"]["class"] = rules["majority"]
    out["source_prior"]["rule"] = rules["source_prior"]
    unseen = sorted({str(s) for s in sites} - set(rules["source_prior"]))
    if unseen:
        out["source_prior"]["fallback_sources"] = unseen
    out["better"] = max(("majority", "source_prior"), key=lambda k: out[k]["accuracy"])
    return out


def per_source_details(y: np.ndarray, pred: np.ndarray, sites: np.ndarray) -> dict[str, Any]:
    """Per source: true class mix, predicted class mix and a Wilson 95% accuracy interval."""
    out = {}
    for s in sorted(set(sites.tolist())):
        sel = sites == s
        n, k = int(sel.sum()), int((y[sel] == pred[sel]).sum())
        ci = binomtest(k, n).proportion_ci(method="wilson")
        out[str(s)] = {
            "class_counts": {c: int((y[sel] == i).sum()) for i, c in enumerate(CLASSES)},
            "predicted_counts": {c: int((pred[sel] == i).sum()) for i, c in enumerate(CLASSES)},
            "accuracy_ci95": [float(ci.low), float(ci.high)],
        }
    return out


def evaluation_warnings(report: dict[str, Any], pred: np.ndarray) -> list[dict[str, str]]:
    """The ``warnings`` list of a metrics report (see the module docstring)."""
    warnings: list[dict[str, str]] = []
    n = len(pred)
    collapsed = False
    if n:
        counts = np.bincount(pred, minlength=len(CLASSES))
        top = int(np.argmax(counts))
        share = counts[top] / n
        if share >= SINGLE_CLASS_SHARE:
            collapsed = True
            warnings.append(
                {
                    "code": "single_class_predictions",
                    "message": (
                        f"{counts[top]} of {n} predictions ({100 * share:.0f}%) are "
                        f"{CLASSES[top]}: the "
                        "model has collapsed to one class; its accuracy is that class's share"
                    ),
                }
            )
    base = report.get("baselines", {})
    better = base.get("better")
    if better and n:
        b = base[better]
        bar = b["ci95"][1] if b.get("ci95") else b["accuracy"]
        if report["accuracy"] <= bar:
            name = "majority-class" if better == "majority" else "source-prior"
            warnings.append(
                {
                    "code": "below_baseline",
                    "message": (
                        f"accuracy {100 * report['accuracy']:.1f}% is not above the "
                        f"{name} baseline "
                        f"({100 * b['accuracy']:.1f}%, 95% CI upper "
                        f"{100 * bar:.1f}%): the model shows "
                        "no skill beyond the class or source mix"
                    ),
                }
            )
    lungs = report.get("attention", {}).get("lungs", {})
    if collapsed and "energy" in lungs:
        warnings.append(
            {
                "code": "attention_uninformative",
                "message": (
                    "lung energy and pointing game are computed for a model "
                    "whose predictions do not "
                    "vary: they show where a constant model's Grad-CAM falls, not that it looks at "
                    "disease"
                ),
            }
        )
    return warnings


def add_baselines(
    report: dict[str, Any],
    y: np.ndarray,
    probs: np.ndarray,
    sites: np.ndarray,
    manifest: pd.DataFrame,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Add ``baselines``, per-source class mix / CIs and ``warnings`` to ``report`` in place."""
    pred = probs.argmax(1)
    report["baselines"] = baseline_report(y, pred, sites, manifest, n_boot=n_boot, seed=seed)
    for s, extra in per_source_details(y, pred, sites).items():
        report.setdefault("per_source", {}).setdefault(s, {}).update(extra)
    report["warnings"] = evaluation_warnings(report, pred)
    return report


def format_baselines(report: dict[str, Any]) -> list[str]:
    """Printed lines: both baselines with the model's margins, then the warnings."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None or v != v else f"{100 * v:.1f}"

    def ci(v: list[float] | None, sign: bool = False) -> str:
        if not v:
            return ""
        f = (lambda x: f"{100 * x:+.1f}") if sign else pct
        return f" [{f(v[0])}, {f(v[1])}]"

    lines = []
    base = report.get("baselines", {})
    if "skipped" in base:
        lines.append(f"baselines: skipped ({base['skipped']})")
    for key, name in (("majority", "majority class"), ("source_prior", "source prior")):
        b = base.get(key)
        if b:
            what = f" ({b['class']})" if key == "majority" else ""
            lines.append(
                f"baseline {name}{what}: {pct(b['accuracy'])}%{ci(b['ci95'])}; model margin "
                f"{100 * b['margin']:+.1f}{ci(b['margin_ci95'], sign=True)} points"
            )
    for w in report.get("warnings", []):
        lines.append(f"WARNING [{w['code']}] {w['message']}")
    return lines
