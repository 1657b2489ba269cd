"""`cxrguide report RUNS... --out report.html`: one self-contained HTML page of the study.

RUNS are run folders or folders holding runs. The page has the data table (Table 3), the model
table (Table 2), leaderboards per stage with CIs and lung energy, per-class and per-source
tables, confusion matrices, ROC and training curves, Grad-CAM galleries and the stage
comparison, the shortcut benchmark, the cross-source study and tuning plots when given, and
how it was all made.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrguide.config.inference import EXPLAIN_CAM_METHODS
from cxrguide.errors import CxrGuideError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help="one self-contained HTML report (tables + figures, readable offline) over runs",
        description="Gather the runs' metrics, predictions and histories into one HTML file "
        "with every figure embedded. Grad-CAM figures come from --explain DIR, else a few are "
        "drawn now (best run of the last stage, and its backbone across stages).",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUNS",
        help="run folders, or folders holding them (searched for model.yaml)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("report.html"),
        metavar="FILE",
        help="the HTML file to write (default report.html)",
    )
    parser.add_argument(
        "--explain",
        type=Path,
        default=None,
        metavar="DIR",
        help="embed the figures of a 'cxrguide explain' folder instead of drawing new ones",
    )
    parser.add_argument(
        "--shortcut",
        type=Path,
        default=None,
        metavar="FILE",
        help="shortcut_runs.csv (or its folder) from 'cxrguide bench shortcut'",
    )
    parser.add_argument(
        "--sources",
        type=Path,
        default=None,
        metavar="DIR",
        help="a 'cxrguide bench sources' folder (its sources.json and plot)",
    )
    parser.add_argument(
        "--tune",
        type=Path,
        default=None,
        metavar="DIR",
        help="a 'cxrguide tune' output folder (its plots are embedded)",
    )
    parser.add_argument("--split", default="test", help="split of the tables (default test)")
    parser.add_argument(
        "--method",
        choices=tuple(EXPLAIN_CAM_METHODS),
        default="gradcam",
        help="CAM method for the figures drawn now",
    )
    parser.add_argument(
        "--per-group",
        type=int,
        default=1,
        metavar="N",
        help="gallery images per class and group when drawn now (default 1)",
    )
    parser.add_argument("--title", default="cxrguide report", help="page title")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrguide.evaluation.report import build_report

    if args.per_group < 1:
        raise CxrGuideError("--per-group: must be at least 1")
    out = build_report(
        args.runs,
        args.out,
        explain_dir=args.explain,
        shortcut=args.shortcut,
        tune=args.tune,
        sources=args.sources,
        split=args.split,
        method=args.method,
        gallery_per_group=args.per_group,
        device=args.device,
        title=args.title,
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained)")
    return 0
