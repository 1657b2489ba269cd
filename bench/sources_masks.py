"""Lung-mask quality per source, and what flagged masks cost in a `bench sources` study.

Reads ``PREP/lung_quality.csv`` (written by ``cxrguide lungs predict RUN --data PREP``, one row
per manifest row: ok / empty / implausible) and counts the flags per source
(:func:`cxrguide.lungs.metrics.flag_counts`). With ``--study DIR`` (a ``bench sources`` output
folder) it also splits every variant's accuracy by mask flag, from the runs' saved outputs:
internal = the all-sources run on the internal test films, external = each held-out run on its
source's films; a guided variant that loses more than ``stage2`` on flagged films than on ok ones
is paying for the masks. Nothing is retrained.

    python bench/sources_masks.py --data PREP [--study DIR] [--seed 0] [--by source]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from _common import emit, load
from cxrguide.data.datasets import Prepared
from cxrguide.evaluation.source_outputs import OUTPUTS, RunOutputs, labels_of
from cxrguide.experiments.sources import fold_name
from cxrguide.lungs.metrics import flag_counts
from cxrguide.lungs.predict import QUALITY_FILE


def _accuracy(outputs: RunOutputs, labels: np.ndarray, rows: np.ndarray) -> tuple[float, int]:
    scored, probs, _ = outputs.take(rows)
    if not len(scored):
        return float("nan"), 0
    return float((probs.argmax(1) == labels[scored]).mean()), len(scored)


def accuracy_by_flag(
    study: Path, prepared: Prepared, flags: np.ndarray, by: str, seed: int = 0
) -> pd.DataFrame:
    """One row per (variant, side, mask): accuracy and films scored, side internal|external.

    ``mask`` is ``ok`` or ``flagged`` (empty or implausible). Films a lung-input / early-gate run
    left out (empty masks) are not scored, so ``n`` says how many were.
    """
    labels, m = labels_of(prepared), prepared.manifest
    sources, test = m[by].astype(str).to_numpy(), (m["split"] == "test").to_numpy()
    rows = []
    for vdir in sorted((study / "runs" / f"seed{seed}").iterdir()):
        for fold in sorted(p for p in vdir.iterdir() if p.is_dir()):
            runs = [r for r in fold.iterdir() if (r / OUTPUTS).is_file()]
            if not runs:
                continue
            out = RunOutputs.load(runs[0])
            if fold.name == "all":
                side, films = "internal", test
            else:
                held = fold.name.removeprefix("holdout-")
                side, films = "external", np.array([_safe(s) == held for s in sources])
            for mask, pick in (("ok", flags == "ok"), ("flagged", flags != "ok")):
                acc, n = _accuracy(out, labels, np.flatnonzero(films & pick))
                rows.append(
                    {
                        "variant": vdir.name,
                        "fold": fold.name,
                        "side": side,
                        "mask": mask,
                        "accuracy": acc,
                        "n": n,
                    }
                )
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise SystemExit(f"{study}/runs/seed{seed}: no scored runs ({OUTPUTS})")
    return frame


def _safe(source: str) -> str:
    return fold_name(source).removeprefix("holdout-")


def pooled(frame: pd.DataFrame) -> pd.DataFrame:
    """Film-weighted accuracy per variant, side and mask (external pooled over held-out runs)."""
    frame = frame[frame["n"] > 0].assign(hits=lambda f: f["accuracy"] * f["n"])
    g = frame.groupby(["variant", "side", "mask"])[["hits", "n"]].sum()
    g["accuracy"] = g["hits"] / g["n"]
    return g[["accuracy", "n"]].unstack("mask")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared folder with lung_quality.csv")
    ap.add_argument("--study", help="bench sources output folder (accuracy by mask flag)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--by", default="source", help="manifest column naming the source")
    args = ap.parse_args()
    before = load()
    prepared = Prepared.open(args.data)
    qfile = prepared.root / QUALITY_FILE
    if not qfile.is_file():
        raise SystemExit(f"{qfile}: missing; run 'cxrguide lungs predict RUN --data {args.data}'")
    flags = pd.read_csv(qfile, keep_default_na=False)["flag"].to_numpy()
    if len(flags) != len(prepared.manifest):
        raise SystemExit(f"{qfile}: {len(flags)} rows, manifest has {len(prepared.manifest)}")
    counts = flag_counts(flags, prepared.manifest[args.by])
    print(counts.to_string())
    figures = {"flags": counts.to_dict(orient="index")}
    if args.study:
        table = pooled(accuracy_by_flag(Path(args.study), prepared, flags, args.by, args.seed))
        print()
        print(table.round(3).to_string())
        figures["accuracy_by_flag"] = {
            f"{v}/{side}": {
                f"{k}_{mask}": float(table.loc[(v, side), (k, mask)])
                for k in ("accuracy", "n")
                for mask in ("ok", "flagged")
                if (k, mask) in table.columns
            }
            for v, side in table.index
        }
    emit("sources_masks", figures, before)


if __name__ == "__main__":
    main()
