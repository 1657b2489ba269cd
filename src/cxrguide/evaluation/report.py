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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cxrguide import __version__
from cxrguide.core.runs import MODEL_YAML, RunInfo, read_info
from cxrguide.data.completion import is_complete
from cxrguide.data.summary import count_table, read_rows
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation import report_sections as rs
from cxrguide.evaluation.galleries import INDEX, STAGE_NAMES, compare_runs, explain_run
from cxrguide.evaluation.report_figures import png_b64, run_figure
from cxrguide.evaluation.report_reliability import reliability_figures, reliability_table
from cxrguide.evaluation.report_table import Table, pct, with_ci
from cxrguide.evaluation.report_template import TEMPLATE
from cxrguide.evaluation.shortcut_summary import read_runs, summary_rows
from cxrguide.files import atomic_write_text
from cxrguide.labels import CLASSES
from cxrguide.models.flops import measure_model

SHORTCUT_SPLIT = "shortcut_test"


@dataclass
class RunRecord:
    """Everything a run folder says about itself."""

    path: Path
    info: RunInfo
    config: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    history: pd.DataFrame | None = None

    @property
    def label(self) -> str:
        stage = STAGE_NAMES.get(self.info.stage, f"Stage {self.info.stage}")
        return f"{stage} {self.info.backbone}"

    def value(self, split: str, key: str) -> float | None:
        return self.metrics.get(split, {}).get(key)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders (with ``model.yaml``) among ``paths`` and below them, each once."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if (p / MODEL_YAML).is_file():
            found[p.resolve()] = None
        elif p.is_dir():
            for m in sorted(p.rglob(MODEL_YAML)):
                found[m.parent.resolve()] = None
        else:
            raise CxrGuideError(f"{p}: no such run folder")
    if not found:
        raise CxrGuideError(f"{', '.join(map(str, paths))}: no run folder (model.yaml) found")
    return list(found)


def load_record(path: Path) -> RunRecord:
    info = read_info(path)
    config = (
        yaml.safe_load((path / "config.yaml").read_text())
        if (path / "config.yaml").is_file()
        else {}
    )
    rec = RunRecord(path, info, config or {})
    for split in ("val", "test", SHORTCUT_SPLIT):
        if (path / f"metrics_{split}.json").is_file():
            rec.metrics[split] = json.loads((path / f"metrics_{split}.json").read_text())
        if (path / f"predictions_{split}.csv").is_file():
            rec.predictions[split] = pd.read_csv(
                path / f"predictions_{split}.csv", keep_default_na=False
            )
    if (path / "history.csv").is_file():
        rec.history = pd.read_csv(path / "history.csv")
    return rec


# --- formatting -------------------------------------------------------------------------------
def attention_cells(metrics: dict[str, Any]) -> tuple[str, str]:
    """Lung energy share and pointing game (%), or why they are missing."""
    lungs = metrics.get("attention", {}).get("lungs")
    if not lungs:
        return "n/a", "n/a"
    if "skipped" in lungs:
        return "no masks", "no masks"
    return pct(lungs.get("energy", {}).get("mean")), pct(lungs.get("pointing_game"))


# --- tables -----------------------------------------------------------------------------------
def data_tables(records: list[RunRecord]) -> list[Table]:
    """Table 3 (source x class x split) for each prepared set the runs used."""

    tables = []
    roots = dict.fromkeys(r.info.data for r in records if r.info.data)
    for i, root in enumerate(roots):
        prep = Path(root)
        if not is_complete(prep) or not (prep / "manifest.csv").is_file():
            tables.append(
                Table(
                    f"data-{i}",
                    f"Prepared set {prep}",
                    [],
                    [],
                    f"{prep}: no finished preparation: counts unavailable",
                )
            )
            continue
        header, rows = count_table(prep)
        rejected = read_rows(prep / "rejected.csv") if (prep / "rejected.csv").exists() else []
        dups = read_rows(prep / "duplicates.csv") if (prep / "duplicates.csv").exists() else []
        stages = pd.Series([r["stage"] for r in rejected], dtype=str).value_counts().sort_index()
        why = ", ".join(f"{k} {v}" for k, v in stages.items()) or "none"
        exact = sum(r["match"] == "exact" for r in dups)
        conflicts = sum(r["label"] != r["kept_label"] for r in dups)
        note = (
            f"Rejected: {len(rejected)} ({why}). Duplicates dropped: {len(dups)} (exact "
            f"{exact}, near {len(dups) - exact}; label conflicts {conflicts})."
        )
        if not (prep / "rejected.csv").exists():
            note = "No rejected.csv / duplicates.csv in this folder (not written by prepare)."
        tables.append(
            Table(
                f"data-{i}",
                "Images per source, class and split",
                header,
                rows,
                f"Prepared set {prep}. {note}",
            )
        )
    return tables


def model_table(records: list[RunRecord]) -> Table:
    """Table 2 for the backbones of the runs, measured at the size each run used."""

    header = [
        "model",
        "input",
        "feature map (h x w x c)",
        "params (M)",
        "Keras params (M)",
        "MACs (G)",
        "study: feature map",
        "study: params (M)",
    ]
    rows = []
    for name, size in dict.fromkeys((r.info.backbone, r.info.image_size) for r in records):
        m = measure_model(name, (size, size))
        pfm = "x".join(map(str, m.paper_feature_map)) if m.paper_feature_map else "n/a"
        fm = "x".join(map(str, m.feature_map))
        row = m.as_row()
        rows.append(
            [
                m.paper_name,
                f"{size}x{size}",
                fm,
                f"{row['params_m']:.2f}",
                f"{row['keras_params_m']:.2f}",
                f"{row['macs_g']:.3f}",
                pfm,
                "n/a" if m.paper_params_m is None else f"{m.paper_params_m:.1f}",
            ]
        )
    note = (
        "Measured on the built network with the study's head; MACs count convolutions and "
        "matrix products of one image. The study's columns are at its own input sizes."
    )
    return Table("models", "Backbones used by these runs", header, rows, note)


def stage_tables(stage: int, records: list[RunRecord], split: str) -> list[Table]:
    """Leaderboard (sorted by validation accuracy), baselines, per-class and per-source tables."""

    records = sorted(records, key=lambda r: -(r.value("val", "accuracy") or -1.0))
    name = STAGE_NAMES.get(stage, f"Stage {stage}")
    board, per_class, per_source = [], [], []
    for rank, r in enumerate(records, 1):
        m = r.metrics.get(split, {})
        ci = m.get("ci95", {})
        energy, pointing = attention_cells(m)
        board.append(
            [
                str(rank),
                r.path.name,
                r.info.backbone,
                r.info.weights_source,
                pct(r.value("val", "accuracy")),
                with_ci(m.get("accuracy"), ci.get("accuracy")),
                with_ci(m.get("macro_f1"), ci.get("macro_f1")),
                with_ci(m.get("macro_auc"), ci.get("macro_auc")),
                energy,
                pointing,
                rs.lung_area(m),
            ]
        )
        for cls in CLASSES:
            c = m.get("per_class", {}).get(cls)
            if c:
                per_class.append(
                    [
                        r.path.name,
                        cls,
                        pct(c["precision"]),
                        pct(c["recall"]),
                        pct(c["specificity"]),
                        pct(c["f1"]),
                        pct(c["auc"]),
                        str(c["support"]),
                    ]
                )
        for source, s in m.get("per_source", {}).items():
            per_source.append(
                [
                    r.path.name,
                    source,
                    str(s["n"]),
                    rs.class_mix(s),
                    pct(s["accuracy"]),
                    rs.wilson(s),
                    pct(s["macro_f1"]),
                    pct(s["macro_auc"]),
                ]
            )

    calibration = reliability_table(f"stage{stage}", name, records, split)
    return [
        Table(
            f"leaderboard-stage{stage}",
            f"{name} leaderboard ({split}; sorted by validation "
            "accuracy; %, 95% bootstrap CI in brackets)",
            [
                "#",
                "run",
                "backbone",
                "weights",
                "val acc",
                f"{split} acc",
                "macro F1",
                "macro AUC",
                "lung energy",
                "pointing game",
                "lung area (chance)",
            ],
            board,
            "Lung energy: share of the predicted class's Grad-CAM inside the lung masks; its "
            "chance level is the lungs' area share (last column); pointing game: peak inside "
            "the lungs.",
        ),
        rs.baseline_table(f"stage{stage}", name, records, split),
        Table(
            f"per-class-stage{stage}",
            f"{name}: per class ({split}, %)",
            ["run", "class", "precision", "recall", "specificity", "F1", "AUC", "n"],
            per_class,
        ),
        Table(
            f"per-source-stage{stage}",
            f"{name}: per source ({split}, %)",
            [
                "run",
                "source",
                "n",
                "true N/P/C",
                "accuracy",
                "95% CI (Wilson)",
                "macro F1",
                "macro AUC",
            ],
            per_source,
            "True N/P/C: the source's Normal / Pneumonia / COVID-19 images in the split. The "
            "Wilson interval stays wide for small n: a handful of films proves little.",
        ),
    ] + ([calibration] if calibration else [])


def shortcut_split_table(records: list[RunRecord]) -> Table | None:
    """Test vs ``shortcut_test`` accuracy per run, stage by stage (phantoms with markers only).

    ``shortcut_test`` puts each film's marker at another class's place: a model that reads the
    lungs scores there as on test; one that learnt the marker falls below chance."""
    rows = []
    for r in sorted(records, key=lambda r: (r.info.stage, -(r.value("val", "accuracy") or -1))):
        shortcut = r.value(SHORTCUT_SPLIT, "accuracy")
        if shortcut is None:
            continue
        test = r.value("test", "accuracy")
        gap = "n/a" if test is None else f"{100 * (test - shortcut):+.1f}"
        rows.append(
            [
                STAGE_NAMES.get(r.info.stage, f"Stage {r.info.stage}"),
                r.path.name,
                r.info.weights_source,
                pct(test),
                pct(shortcut),
                gap,
            ]
        )
    if not rows:
        return None
    return Table(
        "shortcut-split",
        "Test vs shortcut_test accuracy per stage (%)",
        ["stage", "run", "weights", "test acc", "shortcut_test acc", "test - shortcut_test"],
        rows,
        "Test films carry their class's marker at the rate the data was drawn with; "
        "shortcut_test moves every marker to another class's place. A frozen body that "
        "learnt clean films ignores the marker (small gap); fine-tuning can learn it "
        "(large gap); guidance aims to shrink the gap again. Chance is 33.3%.",
    )


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


def provenance_table(records: list[RunRecord]) -> Table:
    rows = []
    for r in records:
        c = r.config
        lr = c.get("lr") if r.info.stage == 1 else c.get("finetune_lr")
        # runs from before l2_scope existed penalised every trainable kernel
        l2 = f"{c.get('l2', 'n/a')} on {c.get('l2_scope', 'all')}"
        balance = f"{c.get('class_weights', 'none')} / {c.get('sampler', 'none')}"
        rows.append(
            [
                r.path.name,
                str(r.info.stage),
                r.info.backbone,
                r.info.weights_source,
                str(c.get("seed", "n/a")),
                str(r.info.image_size),
                str(c.get("max_epochs", "n/a")),
                str(lr),
                str(c.get("batch_size", "n/a")),
                l2,
                balance,
                ", ".join(r.info.attention) or "none",
                r.info.lung_model or "none",
                Path(r.info.parent).name if r.info.parent else "none",
            ]
        )
    return Table(
        "provenance",
        "Runs: how each was trained",
        [
            "run",
            "stage",
            "backbone",
            "weights",
            "seed",
            "input",
            "max epochs",
            "lr",
            "batch",
            "L2 (lambda on scope)",
            "class weights / sampler",
            "attention",
            "lung model",
            "parent",
        ],
        rows,
        "L2 scope 'head': the head's Dense kernels (the study's Keras semantics); 'all': "
        "every trainable kernel of body and head. Class weights 'balanced': each "
        "image's loss times N / (K n_class); sampler 'balanced': classes drawn equally "
        "often.",
    )


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
