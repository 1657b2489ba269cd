"""Report sections that keep a reader honest: baselines, warnings, the data audit.

Kept apart from :mod:`cxrguide.evaluation.report` (the study's tables; it imports this module
lazily, inside functions) so each stays small. The
warnings gathered here go into a banner at the top of the page.
"""

from __future__ import annotations

from typing import Any

from cxrguide.evaluation.report import Table, pct, with_ci


def margin(v: float | None, ci: list[float] | None) -> str:
    if v is None or v != v:
        return "n/a"
    text = f"{100 * v:+.1f}"
    return text + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")


def baseline_table(stage_id: str, name: str, records: list, split: str) -> Table:
    """Per run: accuracy next to the majority and source-prior baselines, margins with CIs."""
    rows = []
    for r in records:
        m = r.metrics.get(split, {})
        b = m.get("baselines", {})
        maj, pri = b.get("majority"), b.get("source_prior")
        if not maj or not pri:
            rows.append([r.path.name, pct(m.get("accuracy")), "n/a", "n/a", "n/a", "n/a"])
            continue
        rows.append([
            r.path.name, with_ci(m.get("accuracy"), m.get("ci95", {}).get("accuracy")),
            f"{with_ci(maj['accuracy'], maj.get('ci95'))} ({maj['class']})",
            margin(maj["margin"], maj.get("margin_ci95")),
            with_ci(pri["accuracy"], pri.get("ci95")),
            margin(pri["margin"], pri.get("margin_ci95")),
        ])  # fmt: skip
    return Table(
        f"baselines-{stage_id}", f"{name}: accuracy against baselines ({split}, %)",
        ["run", f"{split} acc", "majority class", "margin", "source prior", "margin"], rows,
        "Majority class: the train split's most common class for every image. Source prior: "
        "each source's most common train class (DeGrave et al. 2021: mixed-source COVID data "
        "lets a model learn the source). Margins are accuracy points with paired bootstrap 95% "
        "CIs; a margin whose interval includes 0 shows no skill beyond the class mix.",
    )  # fmt: skip


def run_warnings(records: list, split: str) -> list[dict[str, str]]:
    """Every run's ``warnings`` on ``split`` (one banner line each, the run named)."""
    out = []
    for r in records:
        for w in r.metrics.get(split, {}).get("warnings", []):
            out.append({"where": r.path.name, "code": w["code"], "message": w["message"]})
    return out


def lung_area(metrics: dict[str, Any]) -> str:
    """The lungs' area share: the chance level of the lung-energy share."""
    return pct(metrics.get("attention", {}).get("lungs", {}).get("area_share"))


def class_mix(source: dict[str, Any]) -> str:
    counts = source.get("class_counts")
    return "/".join(str(v) for v in counts.values()) if counts else "n/a"


def wilson(source: dict[str, Any]) -> str:
    ci = source.get("accuracy_ci95")
    return f"[{pct(ci[0])}, {pct(ci[1])}]" if ci else "n/a"
