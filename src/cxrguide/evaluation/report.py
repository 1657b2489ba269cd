"""``cxrguide report RUNS... --out report.html``: the study's tables and figures in one file.

The report is a single self-contained HTML page (CSS inline, every figure a base64 PNG, no URL
outside the page), so it reads offline and can be archived beside the runs. It gathers what the
runs already wrote (``model.yaml``, ``config.yaml``, ``metrics_<split>.json``,
``predictions_<split>.csv``, ``history.csv``) and the prepared set's manifest, measures the
backbones (Table 2), and draws Grad-CAM galleries unless an ``explain`` folder is given. A
``bench sources`` folder adds the cross-source study (its tables and plot).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from cxrguide import __version__
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation import report_sections as rs
from cxrguide.evaluation.galleries import INDEX, STAGE_NAMES, compare_runs, explain_run
from cxrguide.evaluation.report_figures import png_b64, run_figure
from cxrguide.evaluation.report_reliability import reliability_figures
from cxrguide.evaluation.report_results import shortcut_split_table, stage_tables
from cxrguide.evaluation.report_runs import (
    RunRecord,
    data_tables,
    find_runs,
    load_record,
    model_table,
    provenance_table,
)
from cxrguide.evaluation.report_table import Table
from cxrguide.evaluation.report_template import TEMPLATE
from cxrguide.evaluation.shortcut_summary import read_runs, summary_rows
from cxrguide.files import atomic_write_text


# --- optional inputs ----------------------------------------------------------------------------
def shortcut_blocks(path: Path) -> list[dict[str, Any]]:
    """The benchmark's summary table, computed from its per-run CSV."""
    head, rows = summary_rows(read_runs(path))
    return [{"table": Table("shortcut", path.name, head, rows)}]


def tune_figures(folder: Path) -> list[dict[str, str]]:
    if not folder.is_dir():
        raise CxrGuideError(f"{folder}: tuning folder not found (--tune)")
    names = {
        "optimization_history.png": "Optimisation history",
        "param_importances.png": "Hyper-parameter importances",
    }
    return [
        {"title": t, "caption": str(folder / f), "src": png_b64(folder / f)}
        for f, t in names.items()
        if (folder / f).is_file()
    ]


def explain_figures(folder: Path) -> list[dict[str, str]]:
    """Every figure listed by the ``explain.json`` files in ``folder`` (and below)."""
    figures = []
    for index in sorted(folder.rglob(INDEX)):
        for f in json.loads(index.read_text()).get("figures", []):
            if (index.parent / f["file"]).is_file():
                figures.append(
                    {
                        "title": f.get("title", f["file"]),
                        "caption": f.get("caption", ""),
                        "src": png_b64(index.parent / f["file"]),
                        "wide": f.get("kind") == "compare",
                    }
                )
    return figures


def auto_explain(
    records: list[RunRecord], split: str, method: str, per_group: int, device: str
) -> tuple[list[dict[str, str]], str]:
    """Galleries of the best run of the last stage and the stage comparison of its backbone."""
    best = lambda rs: max(rs, key=lambda r: r.value("val", "accuracy") or -1.0)  # noqa: E731
    top = best([r for r in records if r.info.stage == max(x.info.stage for x in records)])
    chain = []
    for stage in sorted({r.info.stage for r in records}):
        same = [r for r in records if r.info.stage == stage]
        mine = [r for r in same if r.info.backbone == top.info.backbone]
        chain.append(best(mine or same))
    with tempfile.TemporaryDirectory(prefix="cxrguide-report-") as tmp:
        try:
            explain_run(
                top.path, tmp, split=split, method=method, per_group=per_group, device=device
            )
            if len(chain) > 1:
                compare_runs(
                    [r.path for r in chain], tmp, split=split, method=method, device=device
                )
        except CxrGuideError as err:
            return explain_figures(Path(tmp)), f"Grad-CAM figures incomplete: {err}"
        return explain_figures(Path(tmp)), ""


# --- provenance ---------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    out = {"cxrguide": __version__, "python": platform.python_version()}
    for dist in ("torch", "timm", "grad-cam", "numpy", "scikit-learn", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["platform"] = platform.platform()
    return out


def build_report(
    runs: Sequence[str | Path],
    out: str | Path,
    *,
    explain_dir: str | Path | None = None,
    shortcut: str | Path | None = None,
    tune: str | Path | None = None,
    sources: str | Path | None = None,
    split: str = "test",
    method: str = "gradcam",
    gallery_per_group: int = 1,
    device: str = "cpu",
    title: str = "cxrguide report",
) -> Path:
    """Write the report to ``out`` and return its path."""
    extra = shortcut_blocks(Path(shortcut)) if shortcut else None  # bad paths fail first
    tuning = tune_figures(Path(tune)) if tune else None

    study = rs.sources_section(Path(sources)) if sources else None
    if explain_dir is not None and not Path(explain_dir).is_dir():
        raise CxrGuideError(f"{explain_dir}: explain folder not found (--explain)")
    records = sorted(
        (load_record(p) for p in find_runs(runs)),
        key=lambda r: (r.info.stage, r.info.backbone, str(r.path)),
    )
    stages = sorted({r.info.stage for r in records})
    results = []
    for stage in stages:
        mine = [r for r in records if r.info.stage == stage]
        figures = [
            {
                "title": r.label,
                "caption": str(r.path),
                "src": run_figure(
                    r.label,
                    r.metrics.get(split, {}).get("confusion_matrix"),
                    r.predictions.get(split),
                    r.history,
                    split,
                ),
            }
            for r in mine
        ]
        figures += reliability_figures(mine, split)
        results.append(
            {
                "name": STAGE_NAMES.get(stage, f"Stage {stage}"),
                "id": f"stage{stage}",
                "tables": stage_tables(stage, mine, split),
                "figures": [f for f in figures if f["src"]],
            }
        )
    if explain_dir is not None:
        cams, cam_note = explain_figures(Path(explain_dir)), ""
        if not cams:
            cam_note = f"{explain_dir} lists no figures ({INDEX} missing or empty)."
    else:
        cams, cam_note = auto_explain(records, split, method, gallery_per_group, device)
    random = [r.path.name for r in records if r.info.weights_source == "random"]
    warnings, data_extra, lungs = [], [], None
    for i, root in enumerate(dict.fromkeys(r.info.data for r in records if r.info.data)):
        blocks, audit_warnings = rs.audit_blocks(Path(root), i)
        warnings += audit_warnings
        data_extra.append(
            {"rejected": rs.rejected_table(Path(root), f"rejected-{i}"), "audit": blocks}
        )
        lungs = lungs or rs.lung_section(records, Path(root))
    warnings += rs.run_warnings(records, split)
    phantom = [r.path.name for r in records if r.info.weights_source.startswith("phantom:")]
    html = TEMPLATE.render(
        warnings=warnings,
        data_extra=data_extra,
        lungs=lungs,
        title=title,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        records=records,
        random=random,
        phantom=phantom,
        data=data_tables(records),
        models=model_table(records),
        results=results,
        cams=cams,
        cam_note=cam_note,
        shortcut=extra,
        tune=tuning,
        sources=study,
        provenance=provenance_table(records),
        shortcut_split=shortcut_split_table(records),
        versions=versions(),
        split=split,
        configs=[(r.path.name, yaml.safe_dump(r.config, sort_keys=False)) for r in records],
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, html)
    return out
