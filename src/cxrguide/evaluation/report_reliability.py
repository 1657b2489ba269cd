"""The report's reliability table and diagrams: ECE before -> after temperature, Brier, AURC,
``--abstain`` coverage next to accuracy on the answered films, OOD threshold and share flagged
(from ``metrics_<split>.json``; the diagram is the ``reliability_<split>.png`` evaluate wrote)."""

from __future__ import annotations

from typing import Any

from cxrguide.evaluation.report_figures import png_b64
from cxrguide.evaluation.report_table import Table, pct


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def reliability_table(stage_id: str, name: str, records: list, split: str) -> Table | None:
    """One row per run with a ``calibration`` section; None when no run has one."""
    rows = []
    for r in records:
        m = r.metrics.get(split, {})
        cal, ood, sel = m.get("calibration"), m.get("ood", {}), m.get("selective", {})
        if not cal:
            continue
        abstain = sel.get("abstain", {})
        how = "vector" if cal.get("method") == "vector" else _num(cal.get("temperature"), ".2f")
        rows.append(
            [
                r.path.name,
                how,
                f"{_num(cal['ece'])} -> {_num(cal.get('ece_after'))}",
                f"{_num(cal['ece_classwise'])} -> {_num(cal.get('ece_classwise_after'))}",
                f"{_num(cal['brier'])} -> {_num(cal.get('brier_after'))}",
                _num(sel.get("aurc"), ".4f"),
                pct(abstain.get("coverage")),
                pct(abstain.get("accuracy_answered")),
                _num(ood.get("threshold"), ".4g"),
                pct(ood.get("flagged_share")),
                _num(ood.get("auroc")),
            ]
        )
    if not rows:
        return None
    return Table(
        f"reliability-{stage_id}",
        f"{name}: calibration and reliability ({split})",
        [
            "run",
            "T / vector",
            "ECE",
            "classwise ECE",
            "Brier",
            "AURC",
            "abstain coverage %",
            "accuracy answered %",
            "OOD threshold",
            "flagged %",
            "OOD AUROC",
        ],
        rows,
        "ECE: 15 equal-width bins, plain softmax -> calibrated (temperature T or vector "
        "scaling, fitted on validation). AURC: area under the risk-coverage curve "
        "(lower is better). "
        "Abstain: films answered by 'predict --abstain' (not out of distribution, "
        "confidence >= the validation threshold) and the accuracy on them. Flagged: "
        "Mahalanobis score above the validation threshold (docs/calibration.md).",
    )


def reliability_figures(records: list, split: str) -> list[dict[str, Any]]:
    """The runs' reliability diagrams, where evaluate wrote them."""
    out = []
    for r in records:
        path = r.path / f"reliability_{split}.png"
        if path.is_file():
            out.append(
                {"title": f"{r.label}: reliability", "caption": str(path), "src": png_b64(path)}
            )
    return out
