"""The reliability part of ``evaluate``: calibration, OOD and selective-prediction sections of
``metrics_<split>.json``, per-film columns of ``predictions_<split>.csv``, and the reliability
diagram (``reliability_<split>.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrguide.core.reliability import Reliability, energy_scores, softmax
from cxrguide.core.runs import RunInfo
from cxrguide.data.completion import is_complete
from cxrguide.data.datasets import Prepared
from cxrguide.evaluation.calibration import selective_section
from cxrguide.evaluation.reliability import calibration_section, ood_section, split_outputs
from cxrguide.files import atomic_save
from cxrguide.models.classifier import CxrClassifier

ALL = "all"  # --split all: every film of the prepared folder


def split_rows(prepared: Prepared, split: str) -> np.ndarray:
    """Manifest rows of ``split`` (``all``: every row)."""
    return np.arange(len(prepared.manifest)) if split == ALL else prepared.rows(split)


def _other_data(prepared: Prepared, info: RunInfo) -> bool:
    return bool(info.data) and prepared.root.resolve() != Path(info.data).resolve()


def reliability_report(
    run_dir: Path,
    model: CxrClassifier,
    info: RunInfo,
    device: torch.device,
    prepared: Prepared,
    y: np.ndarray,
    logits: np.ndarray,
    feats: np.ndarray,
    rel: Reliability | None,
    *,
    batch_size: int = 32,
) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
    """(calibrated probabilities, metrics sections, per-film prediction columns)."""
    probs = rel.scale(logits) if rel is not None else softmax(np.asarray(logits, np.float64))
    scores = None if rel is None else rel.ood_scores(feats)
    energies = energy_scores(logits)
    reference = None
    if scores is not None and _other_data(prepared, info) and is_complete(info.data):
        own = Prepared.open(info.data)  # AUROC: these films vs the run's own test films
        z_ref, f_ref, _ = split_outputs(model, info, run_dir, own, device, "test", batch_size)
        reference = (rel.ood_scores(f_ref), energy_scores(z_ref))
    flags = None if rel is None else rel.flags(scores)
    answered = None
    if rel is not None and (flags is not None or rel.confidence_threshold is not None):
        answered = np.ones(len(y), bool) if flags is None else ~flags
        if rel.confidence_threshold is not None:
            answered &= probs.max(1) >= rel.confidence_threshold
    selective = selective_section(y, probs, answered)
    if "abstain" in selective and rel is not None:
        selective["abstain"]["confidence_threshold"] = rel.confidence_threshold
        selective["abstain"]["target_risk"] = rel.target_risk
    extra: dict[str, Any] = {
        "calibration": calibration_section(y, logits, rel),
        "ood": ood_section(rel, scores, energies, reference),
        "selective": selective,
        "reliability_warnings": list(rel.warnings)
        if rel is not None
        else ["no reliability statistics: uncalibrated, no OOD score"],
    }
    columns: dict[str, np.ndarray] = {"energy_score": energies}
    if scores is not None:
        columns["ood_score"] = scores
    if flags is not None:
        columns["out_of_distribution"] = flags
    if answered is not None:
        columns["answered"] = answered
    return probs, extra, columns


def reliability_figure(section: dict[str, Any], path: Path, split: str) -> Path:
    """Reliability diagram (top-label accuracy per confidence bin, before / after temperature)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=100)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    shown = {"before": f"softmax (ECE {section['ece']:.3f})"}
    if section.get("ece_after") is not None:
        how = (
            "vector scaling"
            if section.get("method") == "vector"
            else f"T = {section['temperature']:.2f}"
        )
        shown["after"] = f"{how} (ECE {section['ece_after']:.3f})"
    for key, label in shown.items():
        bins = section["reliability"][key]
        pts = [
            (c, a)
            for c, a in zip(bins["confidence"], bins["accuracy"], strict=True)
            if c is not None
        ]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", lw=1.5, label=label)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top probability)",
        ylabel="accuracy",
        title=f"reliability, {split}",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic_save(lambda fh: fig.savefig(fh, format="png"), path)
    plt.close(fig)
    return path


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def format_reliability(report: dict[str, Any]) -> list[str]:
    """Printed lines: ECE before -> after, OOD share (and AUROC), AURC and abstention."""
    cal, ood, sel = report.get("calibration"), report.get("ood"), report.get("selective")
    if cal is None:
        return []
    t = cal.get("temperature")
    how = "vector scaling" if cal.get("method") == "vector" else f"T {_f(t, '.2f')}"
    ci = cal.get("ece_after_ci") or [None, None]
    floor = cal.get("ece_after_floor") or cal.get("ece_floor") or {}
    lines = [
        f"calibration: ECE {_f(cal['ece'])} -> {_f(cal.get('ece_after'))} "
        f"(95% CI {_f(ci[0])}-{_f(ci[1])}; {how}), classwise ECE {_f(cal['ece_classwise'])} -> "
        f"{_f(cal.get('ece_classwise_after'))}, Brier {_f(cal['brier'])} -> "
        f"{_f(cal.get('brier_after'))}"
    ]
    if floor:
        lines.append(
            f"  a perfectly calibrated model would show ECE {_f(floor['mean'])} "
            f"(95% up to {_f(floor['hi95'])}) on these films"
        )
    if ood and ood.get("flagged_share") is not None:
        line = (
            f"out-of-distribution: {ood['flagged_share']:.1%} flagged (Mahalanobis > "
            f"{ood['threshold']:.4g}, {ood['false_flag_rate']:.0%} of validation)"
        )
        if ood.get("auroc") is not None:
            line += (
                f", AUROC vs own test {ood['auroc']:.3f} (energy {_f(ood['energy'].get('auroc'))})"
            )
        lines.append(line)
    if sel:
        line = f"selective: AURC {sel['aurc']:.4f}"
        if "abstain" in sel:
            a = sel["abstain"]
            line += (
                f"; --abstain answers {a['coverage']:.1%} with accuracy "
                f"{_f(a['accuracy_answered'])} (all films {a['accuracy_all']:.3f})"
            )
        lines.append(line)
    lines += [f"warning: {w}" for w in report.get("reliability_warnings", [])]
    return lines
