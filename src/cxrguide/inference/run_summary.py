"""What a served model says about itself beyond the network: its weights named without server
paths, and counts from the data it was trained and scored on (``GET /v1/model``, DICOM SR)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from cxrguide.core.runs import RunInfo
from cxrguide.labels import CLASSES


def public_source(source: str) -> str:
    """``kind:/some/dir/file`` -> ``kind:file``: the API names weights without server paths."""
    kind, sep, rest = source.partition(":")
    return f"{kind}{sep}{Path(rest).name}" if sep and "/" in rest else source


def training_summary(run_dir: Path, info: RunInfo) -> dict[str, Any]:
    """Counts from the run's prepared manifest (when still on disk) and its saved metrics."""

    summary: dict[str, Any] = {"prepared": Path(info.data).name if info.data else None}
    manifest = Path(info.data) / "manifest.csv" if info.data else None
    if manifest is not None and manifest.is_file():
        table = pd.read_csv(manifest, usecols=lambda c: c in {"split", "label", "source"})
        summary["images"] = int(len(table))
        if "split" in table:
            summary["by_split"] = {str(k): int(v) for k, v in table["split"].value_counts().items()}
        if {"split", "label"} <= set(table):
            train = table[table["split"] == "train"]["label"].value_counts()
            summary["train_by_class"] = {c: int(train.get(c, 0)) for c in CLASSES}
        if "source" in table:
            summary["sources"] = sorted(map(str, table["source"].unique()))
    for split in ("val", "test"):
        path = run_dir / f"metrics_{split}.json"
        if path.is_file():
            m = json.loads(path.read_text())
            summary[f"{split}_metrics"] = {
                k: m.get(k) for k in ("n", "accuracy", "macro_f1", "macro_auc")
            }
    return summary
