"""Report sections that keep a reader honest: baselines, warnings, the data audit.

Kept apart from :mod:`cxrguide.evaluation.report` (the study's tables; it imports this module
lazily, inside functions) so each stays small. The
warnings gathered here go into a banner at the top of the page.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrguide.data.audit import AUDIT_JSON
from cxrguide.data.audit_render import class_rows, findings, stats_rows
from cxrguide.data.summary import read_rows
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.report_figures import fig_b64
from cxrguide.evaluation.report_table import Table, pct, with_ci


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
        rows.append(
            [
                r.path.name,
                with_ci(m.get("accuracy"), m.get("ci95", {}).get("accuracy")),
                f"{with_ci(maj['accuracy'], maj.get('ci95'))} ({maj['class']})",
                margin(maj["margin"], maj.get("margin_ci95")),
                with_ci(pri["accuracy"], pri.get("ci95")),
                margin(pri["margin"], pri.get("margin_ci95")),
            ]
        )
    return Table(
        f"baselines-{stage_id}",
        f"{name}: accuracy against baselines ({split}, %)",
        ["run", f"{split} acc", "majority class", "margin", "source prior", "margin"],
        rows,
        "Majority class: the train split's most common class for every image. Source prior: "
        "each source's most common train class (DeGrave et al. 2021: mixed-source COVID data "
        "lets a model learn the source). Margins are accuracy points with paired bootstrap 95% "
        "CIs; a margin whose interval includes 0 shows no skill beyond the class mix.",
    )


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


# --- data: rejected by reason, the audit ---------------------------------------------------------
def rejected_table(prep: Path, table_id: str) -> Table | None:
    """rejected.csv counted by source, stage and reason (most common first)."""

    if not (prep / "rejected.csv").is_file():
        return None
    counts = Counter(
        (r["source"], r["stage"], r["reason"]) for r in read_rows(prep / "rejected.csv")
    )
    rows = [
        [s, st, why, str(n)]
        for (s, st, why), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return Table(
        table_id,
        "Rejected images by reason",
        ["source", "stage", "reason", "n"],
        rows,
        "" if rows else "Nothing was rejected.",
    )


def audit_blocks(prep: Path, index: int) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The audit (from its ``audit.json``) as report blocks, and its warnings for the banner."""

    path = prep / "audit" / AUDIT_JSON
    if not path.is_file():
        return [{"text": f"No data audit in {path.parent} (run 'cxrguide audit {prep}')."}], []
    audit = json.loads(path.read_text())
    blocks: list[dict[str, Any]] = [
        {"heading": "Data audit: class x source"},
        {"table": Table(f"audit-{index}-0", "Counts (share of the source)", *class_rows(audit))},
        *({"text": line} for line in findings(audit)),
        {"heading": "Per-source image statistics"},
        {
            "table": Table(
                f"audit-{index}-1",
                "Letterbox: padded share of the square; mean / std: "
                "8-bit intensity of the content; black / white: pixels <= 5 / >= 250",
                *stats_rows(audit),
            )
        },
    ]
    warnings = [
        {"where": f"data audit ({prep.name})", "code": w["code"], "message": w["message"]}
        for w in audit.get("warnings", [])
    ]
    return blocks, warnings


# --- lung segmentation -----------------------------------------------------------------------
def _lung_run(records: list, prep: Path) -> Path | None:
    from cxrguide.core.runs import lung_run_path

    for r in records:  # a run's own lung model (inside it), never one looked up elsewhere
        if r.info.lung_model:
            try:
                return lung_run_path(r.path, r.info.lung_model)
            except CxrGuideError:
                continue
    for prov in [
        *sorted((prep / "cache").glob("lungs_*.json")),
        *sorted((prep / "audit/lungs").glob("lungs_*.json")),
    ]:
        run = json.loads(prov.read_text()).get("run")
        if run and Path(run).is_dir():
            return Path(run)
    return None


def lung_section(records: list, prep: Path, examples: int = 4) -> dict[str, Any] | None:
    """Dice of the lung model on its test split, mask flags on the prepared set, bad examples."""

    run = _lung_run(records, prep)
    # the prepared set's own masks (lungs predict), else those the audit predicted (--lungs)
    folder = prep if (prep / "lung_quality.csv").is_file() else prep / "audit/lungs"
    quality = folder / "lung_quality.csv"
    if run is None and not quality.is_file():
        return None
    tables, figures, notes = [], [], []
    if run is not None and (run / "metrics.json").is_file():
        m = json.loads((run / "metrics.json").read_text())
        rows = []
        for split in ("val", "test"):
            s = m.get(split, {})
            if s.get("n"):
                rows.append(
                    [
                        split,
                        str(s["n"]),
                        f"{s['dice_mean']:.3f}",
                        f"{s['dice_min']:.3f}",
                        f"{s['iou_mean']:.3f}",
                        f"{s['hd95_px_mean']:.1f}",
                    ]
                )
        tables.append(
            Table(
                "lungs-metrics",
                f"Lung model {run.name}: Dice on its own splits",
                ["split", "n", "Dice", "Dice min", "IoU", "HD95 (px)"],
                rows,
                "Measured on the lung data set's held-out films; the classifier's "
                "films have no lung ground truth.",
            )
        )
    elif run is not None:
        notes.append(f"{run}: no metrics.json (run 'cxrguide lungs evaluate {run}').")
    if quality.is_file():
        q = pd.read_csv(quality, keep_default_na=False)
        counts = q["flag"].value_counts()
        tables.append(
            Table(
                "lungs-quality",
                "Predicted masks on the prepared set",
                ["flag", "n", "share"],
                [[f, str(n), pct(n / len(q))] for f, n in counts.items()],
                "implausible: lung area outside the plausible range or not two "
                "lungs; empty: no lung found. Such masks mislead lung energy.",
            )
        )
        bad = [i for i, f in enumerate(q["flag"]) if f != "ok"][:examples]
        if bad:
            figures.append(
                {
                    "title": f"Implausible or empty lung masks ({len(bad)} of "
                    f"{int((q['flag'] != 'ok').sum())})",
                    "caption": ", ".join(q["image_id"].iloc[bad]),
                    "src": _mask_examples(prep, folder, bad, list(q["image_id"].iloc[bad])),
                }
            )
    return {"tables": tables, "figures": [f for f in figures if f["src"]], "notes": notes}


def _mask_examples(prep: Path, folder: Path, rows: list[int], names: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxrguide.data.datasets import Prepared

    try:
        prepared = Prepared.open(prep)
        own = folder / f"lungs_{prepared.size}.npy"
        images = prepared.images
        masks = np.load(own, mmap_mode="r") if own.is_file() else prepared.lungs()
    except Exception:  # noqa: BLE001 - a figure is optional; the table still says it
        return ""
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 2.9), squeeze=False)
    for ax, row, name in zip(axes[0], rows, names, strict=True):
        ax.imshow(images[row], cmap="gray", vmin=0, vmax=255)
        if masks[row].any():
            ax.contour(masks[row] > 127, levels=[0.5], colors="#ff3b30", linewidths=1)
        ax.set_title(name.split(":", 1)[0] + "\n" + name.rsplit("/", 1)[-1][:24], fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    out = fig_b64(fig)
    plt.close(fig)
    return out


def sources_section(path: Path) -> dict[str, Any]:
    """The cross-source study of a ``bench sources`` folder (or its ``sources.json``): the
    headline table per variant, internal -> external per held-out source, and ``sources.png``."""
    import json

    from cxrguide.errors import CxrGuideError
    from cxrguide.evaluation.report_figures import png_b64
    from cxrguide.evaluation.sources_summary import headline_rows, per_source_rows

    folder = path.parent if path.suffix == ".json" else path
    file = folder / "sources.json"
    if not file.is_file():
        raise CxrGuideError(
            f"{file}: cross-source study not found (--sources: a folder "
            "written by 'cxrguide bench sources')"
        )
    try:
        study = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CxrGuideError(f"{file}: not readable as JSON ({err})") from None
    if not isinstance(study, dict) or not study.get("variants"):
        raise CxrGuideError(f"{file}: no 'variants' (not a 'bench sources' result)")
    try:
        head, rows = headline_rows(study)
        per_head, per_rows = per_source_rows(study)
    except (KeyError, IndexError, TypeError) as err:
        raise CxrGuideError(f"{file}: incomplete study (missing {err})") from None
    caption = (
        f"{study.get('backbone', '?')}, weights {study.get('weights', '?')}, "
        f"{study.get('size', '?')} px, seeds {study.get('seeds', '?')}: means over "
        "held-out sources (%)"
    )
    plot = folder / "sources.png"
    return {
        "tables": [
            Table("sources", caption, head, rows, study.get("protocol", "")),
            Table(
                "sources-per-source",
                "Accuracy (%) internal -> external per held-out source",
                per_head,
                per_rows,
            ),
        ],
        "figure": {
            "title": "Internal vs external accuracy per source and variant",
            "caption": str(plot),
            "src": png_b64(plot),
        }
        if plot.is_file()
        else None,
        "notes": [
            f"Skipped {s['source']} ({s['n']} films): {s['reason']}."
            for s in study.get("skipped", [])
        ],
    }
