"""The shortcut benchmark's summary: one row per variant, mean ± sd over seeds.

One function for the benchmark's own Markdown (``experiments.shortcut``) and the report's table
(``report --shortcut DIR/*_runs.csv``), both read from the per-run CSV.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrguide.errors import CxrGuideError

COLUMNS = {
    "test_accuracy": "test acc",
    "shortcut_accuracy": "shortcut_test acc",
    "follows_marker": "follows marker",
    "erased_accuracy": "shortcut_test acc, marker painted out",
    "lung_energy": "lung energy (test)",
    "lung_pointing": "pointing game (test)",
    "marker_energy": "marker energy (shortcut_test)",
    "marker_saliency": "input gradient in marker (shortcut_test)",
    "lesion_energy": "lesion energy (test)",
    "minutes": "min/run",
}


def _cell(values: pd.Series, key: str) -> str:
    v = values.dropna()
    if v.empty:
        return "n/a"
    if key == "minutes":
        return f"{v.mean():.1f}"
    sd = f" ± {100 * v.std(ddof=0):.1f}" if len(v) > 1 else ""
    return f"{100 * v.mean():.1f}{sd}"


def summary_rows(
    runs: pd.DataFrame, variants: list[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and one row per variant (in ``variants`` order, default: first seen), mean ± sd
    over seeds in %; columns a run predates read n/a."""
    order = variants if variants is not None else list(dict.fromkeys(runs["variant"]))
    head = ["variant", "seeds", *COLUMNS.values()]
    body = []
    for v in order:
        part = runs[runs.variant == v]
        if part.empty:
            continue
        cells = [_cell(part.get(k, pd.Series(dtype=float)), k) for k in COLUMNS]
        body.append([v, str(len(part)), *cells])
    return head, body


def read_runs(path: Path) -> pd.DataFrame:
    """A benchmark's ``*_runs.csv`` (or the benchmark folder holding one)."""
    if path.is_dir():
        found = sorted(path.glob("*_runs.csv"))
        if not found:
            raise CxrGuideError(
                f"{path}: no *_runs.csv in this folder (run 'cxrguide bench shortcut')"
            )
        path = found[-1]
    if not path.is_file():
        raise CxrGuideError(f"{path}: shortcut benchmark file not found (--shortcut)")
    try:
        runs = pd.read_csv(path)
    except (ValueError, OSError) as err:
        raise CxrGuideError(f"{path}: not a readable CSV ({err})") from None
    if "variant" not in runs.columns:
        raise CxrGuideError(f"{path}: not a shortcut benchmark runs CSV (no 'variant' column)")
    return runs
