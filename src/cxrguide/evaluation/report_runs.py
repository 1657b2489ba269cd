"""The runs a report covers: their folders read, and the tables of what they used and how.

:class:`RunRecord` is everything a run folder says about itself (``model.yaml``, ``config.yaml``,
``metrics_<split>.json``, ``predictions_<split>.csv``, ``history.csv``); the tables here describe
the prepared sets the runs used (Table 3), their backbones (Table 2) and how each was trained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cxrguide.core.runs import MODEL_YAML, RunInfo, read_info
from cxrguide.data.completion import is_complete
from cxrguide.data.summary import count_table, read_rows
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.galleries import STAGE_NAMES
from cxrguide.evaluation.report_table import Table
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
