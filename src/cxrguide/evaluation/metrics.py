"""Classification metrics as the study reports them, plus what a careful reader wants.

All numbers come from scikit-learn. Bootstrap 95% intervals resample images with a fixed seed;
per-source breakdowns expose shortcuts that a pooled figure hides.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from cxrguide.labels import CLASSES

LABELS = list(range(len(CLASSES)))


def _auc(y: np.ndarray, probs: np.ndarray) -> tuple[list[float | None], float | None]:
    """One-vs-rest AUC per class (None where a class has no positives or no negatives)."""
    per_class: list[float | None] = []
    for k in LABELS:
        positives = y == k
        if positives.all() or not positives.any():
            per_class.append(None)
        else:
            per_class.append(float(roc_auc_score(positives, probs[:, k])))
    valid = [a for a in per_class if a is not None]
    return per_class, (float(np.mean(valid)) if valid else None)


def point_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    pred = probs.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=LABELS, zero_division=0
    )
    cm = confusion_matrix(y, pred, labels=LABELS)
    specificity = []
    for k in LABELS:
        tn = cm.sum() - cm[k].sum() - cm[:, k].sum() + cm[k, k]
        negatives = cm.sum() - cm[k].sum()
        specificity.append(float(tn / negatives) if negatives else None)
    auc, macro_auc = _auc(y, probs)
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=LABELS, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=LABELS, average="weighted", zero_division=0)),
        "macro_auc": macro_auc,
        "per_class": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "specificity": specificity[k],
                "f1": float(f1[k]),
                "auc": auc[k],
                "support": int(support[k]),
            }
            for k, name in enumerate(CLASSES)
        },
        "confusion_matrix": cm.tolist(),
    }


def bootstrap_ci(
    y: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, list[float] | None]:
    """95% percentile intervals of accuracy, macro F1 and macro AUC over image resamples."""
    rng = np.random.default_rng(seed)
    pred = probs.argmax(1)
    stats: dict[str, list[float]] = {"accuracy": [], "macro_f1": [], "macro_auc": []}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        yy, pp = y[idx], pred[idx]
        stats["accuracy"].append(float((yy == pp).mean()))
        stats["macro_f1"].append(
            float(f1_score(yy, pp, labels=LABELS, average="macro", zero_division=0))
        )
        auc = _auc(yy, probs[idx])[1]
        if auc is not None:
            stats["macro_auc"].append(auc)
    return {
        k: ([float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None)
        for k, v in stats.items()
    }


def classification_report(
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Point metrics, bootstrap CIs and (if ``groups`` is given) the per-source breakdown."""
    report = point_metrics(y, probs)
    report["ci95"] = bootstrap_ci(y, probs, n_boot=n_boot, seed=seed)
    if groups is not None:
        report["per_source"] = {
            str(g): {
                k: v
                for k, v in point_metrics(y[groups == g], probs[groups == g]).items()
                if k in ("n", "accuracy", "macro_f1", "macro_auc", "confusion_matrix")
            }
            for g in sorted(set(groups.tolist()))
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    """A compact printed table (the run's metrics json holds everything)."""

    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.1f}"

    ci = report.get("ci95", {})
    acc_ci = ci.get("accuracy")
    lines = [
        f"n={report['n']}  accuracy {pct(report['accuracy'])}%"
        + (f" (95% CI {pct(acc_ci[0])}-{pct(acc_ci[1])})" if acc_ci else "")
        + f"  macro F1 {pct(report['macro_f1'])}  macro AUC {pct(report['macro_auc'])}",
        f"{'class':<10} {'prec':>6} {'recall':>6} {'spec':>6} {'F1':>6} {'AUC':>6} {'n':>5}",
    ]
    for name, m in report["per_class"].items():
        lines.append(
            f"{name:<10} {pct(m['precision']):>6} {pct(m['recall']):>6} "
            f"{pct(m['specificity']):>6} {pct(m['f1']):>6} {pct(m['auc']):>6} {m['support']:>5}"
        )
    lines.append("confusion (rows true, cols predicted: " + ", ".join(CLASSES) + ")")
    lines += ["  " + " ".join(f"{v:5d}" for v in row) for row in report["confusion_matrix"]]
    for source, m in report.get("per_source", {}).items():
        ci = m.get("accuracy_ci95")
        mix = "/".join(str(v) for v in m.get("class_counts", {}).values())
        lines.append(
            f"  {source:<24} n={m['n']:<5} accuracy {pct(m['accuracy'])}%"
            + (f" (95% CI {pct(ci[0])}-{pct(ci[1])})" if ci else "")
            + (f"  true N/P/C {mix}" if mix else "")
        )
    for reason, count in report.get("skipped", {}).items():
        lines.append(f"skipped {count} image(s): {reason}")
    if report.get("lung_energy") is not None:
        lines.append(f"Grad-CAM energy in the lungs {pct(report['lung_energy'])}%")
    s = report.get("shortcut")
    if s:
        lines.append(
            f"{s['split']} (n={s['n']}, markers at another class's place): accuracy "
            f"{pct(s['accuracy'])}%, follows the marker {pct(s['follows_marker'])}%, "
            f"marker painted out {pct(s['erased_accuracy'])}%"
        )
        lines.append(s["note"])

    from cxrguide.evaluation.baselines import format_baselines

    lines += format_baselines(report)
    return "\n".join(lines)
