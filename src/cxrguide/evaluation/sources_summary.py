"""The cross-source study's results: per variant and seed from run outputs, then the files.

:func:`variant_summary` turns one variant's runs (the all-sources run and one run per held-out
source, see :mod:`cxrguide.experiments.sources`) into the ``sources.json`` entry;
:func:`combine_seeds` averages seeds; :func:`write_study` writes ``sources.json``,
``sources.csv`` (one row per variant, seed and source), ``sources.md`` (the report section)
and ``sources.png`` (internal vs external accuracy per source and variant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrguide.data.datasets import Prepared
from cxrguide.evaluation.source_metrics import (
    ece,
    mahalanobis_auroc,
    source_probe,
    worst_group_accuracy,
)
from cxrguide.evaluation.source_outputs import RunOutputs, labels_of
from cxrguide.files import atomic_write_json, atomic_write_text

PER_SOURCE = ("internal_accuracy", "external_accuracy", "external_ece", "ood_auroc")
HEADLINE = (
    "mean_internal",
    "mean_external",
    "source_probe_accuracy",
    "source_probe_majority",
    "worst_group_accuracy",
    "internal_test_accuracy",
)


def _accuracy(y: np.ndarray, probs: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean()) if len(y) else float("nan")


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def variant_summary(
    prepared: Prepared,
    by: str,
    held_out: list[str],
    internal: RunOutputs,
    folds: dict[str, RunOutputs],
    *,
    min_group: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """One variant, one seed: per held-out source and the headline numbers.

    ``internal``: the run trained on every source (internal accuracy of source s = its accuracy
    on s's test-split films; the probe and the worst group also come from it). ``folds[s]``:
    the run trained without s (external accuracy, ECE on s; the OOD AUROC of s's films vs the
    other sources' test films, Mahalanobis fitted on that run's training films).
    """
    labels = labels_of(prepared)
    sources = prepared.manifest[by].astype(str).to_numpy()
    split = prepared.manifest["split"].to_numpy()
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    per_source = []
    for s in held_out:
        rows_in, probs_in, _ = internal.take(test[sources[test] == s])
        fold = folds[s]
        rows_ex, probs_ex, feats_ex = fold.take(np.flatnonzero(sources == s))
        rows_fit, _, feats_fit = fold.take(train[sources[train] != s])
        _, _, feats_int = fold.take(test[sources[test] != s])
        per_source.append(
            {
                "source": s,
                "n": int(len(rows_ex)),
                "internal_n": int(len(rows_in)),
                "internal_accuracy": _accuracy(labels[rows_in], probs_in),
                "external_accuracy": _accuracy(labels[rows_ex], probs_ex),
                "external_ece": ece(probs_ex, labels[rows_ex]),
                "ood_auroc": mahalanobis_auroc(feats_fit, labels[rows_fit], feats_int, feats_ex),
            }
        )
    rows_fit, _, feats_fit = internal.take(train)
    rows_t, probs_t, feats_t = internal.take(test)
    probe, majority = source_probe(feats_fit, sources[rows_fit], feats_t, sources[rows_t], seed)
    worst = worst_group_accuracy(labels[rows_t], probs_t.argmax(1), sources[rows_t], min_group)
    return {
        "per_source": per_source,
        "mean_internal": _mean([p["internal_accuracy"] for p in per_source]),
        "mean_external": _mean([p["external_accuracy"] for p in per_source]),
        "source_probe_accuracy": probe,
        "source_probe_majority": majority,
        "worst_group_accuracy": worst["accuracy"],
        "worst_group": worst["group"],
        "internal_test_accuracy": _accuracy(labels[rows_t], probs_t),
    }


def combine_seeds(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every figure (per source too), the spread of the two means beside."""
    runs = list(by_seed.values())
    first = runs[0]
    per_source = []
    for i, entry in enumerate(first["per_source"]):
        merged = {"source": entry["source"], "n": entry["n"], "internal_n": entry["internal_n"]}
        merged.update({k: _mean([r["per_source"][i][k] for r in runs]) for k in PER_SOURCE})
        per_source.append(merged)
    out: dict[str, Any] = {"per_source": per_source}
    out["mean_internal"] = _mean([p["internal_accuracy"] for p in per_source])
    out["mean_external"] = _mean([p["external_accuracy"] for p in per_source])
    for key in HEADLINE[2:]:
        out[key] = _mean([r[key] for r in runs])
    out["worst_group"] = first["worst_group"] if len(runs) == 1 else None
    out["seeds"] = sorted(by_seed)
    for key in ("mean_internal", "mean_external"):
        out[f"{key}_sd"] = float(np.std([r[key] for r in runs]))
    return out


def runs_frame(by_variant: dict[str, dict[int, dict[str, Any]]]) -> pd.DataFrame:
    """One row per variant, seed and held-out source (the CSV)."""
    rows = []
    for variant, seeds in by_variant.items():
        for seed, summary in seeds.items():
            for p in summary["per_source"]:
                rows.append(
                    {"variant": variant, "seed": seed, **p, **{k: summary[k] for k in HEADLINE}}
                )
    return pd.DataFrame(rows)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)  # sources.json stores NaN as null


def headline_rows(study: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, one row per variant): the study's headline figures, formatted."""
    head = [
        "variant",
        "internal",
        "external",
        "ext - int",
        "source probe (majority)",
        "worst group",
        "ECE external",
        "OOD AUROC",
    ]
    rows = []
    for name, v in study["variants"].items():
        gap = _num(v["mean_external"]) - _num(v["mean_internal"])
        ece_mean = _mean([p["external_ece"] for p in v["per_source"]])
        auroc = _mean([p["ood_auroc"] for p in v["per_source"]])
        rows.append(
            [
                name,
                _pct(v["mean_internal"]),
                _pct(v["mean_external"]),
                "n/a" if not np.isfinite(gap) else f"{100 * gap:+.1f}",
                f"{_pct(v['source_probe_accuracy'])} ({_pct(v['source_probe_majority'])})",
                _pct(v["worst_group_accuracy"]),
                _pct(ece_mean),
                "n/a" if not np.isfinite(auroc) else f"{auroc:.3f}",
            ]
        )
    return head, rows


def per_source_rows(study: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, one row per held-out source): accuracy (%) internal -> external per variant."""
    variants = study["variants"]
    first = next(iter(variants.values()))["per_source"]
    rows = []
    for i, p in enumerate(first):
        cells = [
            f"{_pct(v['per_source'][i]['internal_accuracy'])} -> "
            f"{_pct(v['per_source'][i]['external_accuracy'])}"
            for v in variants.values()
        ]
        rows.append([p["source"], str(p["n"]), *cells])
    return ["source", "n", *variants], rows


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def markdown(study: dict[str, Any]) -> str:
    """The report section: headline table per variant, then internal -> external per source."""
    lines = [
        f"## Cross-source study ({study['backbone']}, weights {study['weights']}, "
        f"{study['size']} px, seeds {study['seeds']})",
        "",
        study["protocol"],
        "",
        *_md_table(*headline_rows(study)),
        "",
        "Accuracy (%) internal -> external per held-out source:",
        "",
        *_md_table(*per_source_rows(study)),
    ]
    for skip in study["skipped"]:
        lines.append(f"\nSkipped {skip['source']} ({skip['n']} films): {skip['reason']}.")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in study["timing"].items())
    lines += ["", f"Time per phase: {timing}."]
    return "\n".join(lines)


def plot(study: dict[str, Any], path: Path) -> None:
    """Internal (x) vs external (y) accuracy, one point per source and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    markers = "osD^vP*Xh<>"
    for k, (name, v) in enumerate(study["variants"].items()):
        for i, p in enumerate(v["per_source"]):
            ax.scatter(
                p["internal_accuracy"],
                p["external_accuracy"],
                color=f"C{k % 10}",
                marker=markers[i % len(markers)],
                s=50,
                label=name if i == 0 else None,
            )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(
        xlim=(0, 1.02),
        ylim=(0, 1.02),
        xlabel="internal accuracy (source in training)",
        ylabel="external accuracy (source held out)",
        title="Leave one source out",
    )
    sources = [p["source"] for p in next(iter(study["variants"].values()))["per_source"]]
    ax.text(
        0.02,
        0.98,
        "markers: " + ", ".join(f"{markers[i % len(markers)]} {s}" for i, s in enumerate(sources)),
        transform=ax.transAxes,
        va="top",
        fontsize=7,
        wrap=True,
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_safe(value: Any) -> Any:
    """NaN (an undefined figure) -> null, so sources.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_study(out: Path, study: dict[str, Any], frame: pd.DataFrame) -> str:
    """``sources.json``, ``sources.csv``, ``sources.md`` and ``sources.png`` in ``out``."""
    atomic_write_json(out / "sources.json", _json_safe(study))
    atomic_write_text(out / "sources.csv", frame.to_csv(index=False))
    md = markdown(study) + "\n\n![internal vs external accuracy](sources.png)\n"
    atomic_write_text(out / "sources.md", md)
    plot(study, out / "sources.png")
    return md
