"""`cxrguide explain RUN [IMAGES...] --out DIR`: Grad-CAM figures a reader can check.

Without IMAGES: galleries chosen from the run's ``predictions_<split>.csv`` (per true class the
most confident correct cases, the most confident mistakes, the borderline ones). IMAGES are
files (PNG/JPEG/DICOM) or ``image_id`` values of the run's prepared set. ``--compare RUN1 RUN2
[RUN3]`` draws the same films under each run side by side (the study's Stage I/II/III figure).
Every figure is indexed in ``DIR/explain.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrguide.config.inference import EXPLAIN_CAM_METHODS
from cxrguide.errors import CxrGuideError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "explain",
        help="Grad-CAM galleries of a run, or the same films across runs (--compare)",
        description="Grad-CAM overlays (heatmap of the predicted class, lung contour in "
        "magenta when the prepared set has lung masks, true and predicted class with its "
        "probability). Examples: 'cxrguide explain runs/stage2-vgg16 --out figs'; "
        "'cxrguide explain --compare runs/stage1-vgg16 runs/stage2-vgg16 runs/stage3-vgg16 "
        "--out figs'.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="RUN [IMAGES...]",
        help="the run folder, then optional image files or image ids "
        "(with --compare: only the images)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="RUN",
        default=None,
        help="two or more runs (e.g. Stage I, II, III) drawn side by side",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: RUN/explain; required with --compare)",
    )
    parser.add_argument(
        "--method",
        choices=tuple(EXPLAIN_CAM_METHODS),
        default="gradcam",
        help="CAM method (default gradcam; scorecam is slow: one forward pass per feature channel)",
    )
    parser.add_argument("--split", default="test", help="split whose predictions pick the cases")
    parser.add_argument(
        "--per-group",
        type=int,
        default=3,
        metavar="N",
        help="images per class and group in a gallery (default 3)",
    )
    parser.add_argument(
        "--per-class",
        type=int,
        default=1,
        metavar="N",
        help="images per class in the --compare figure (default 1)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PREP",
        help="prepared folder (default: the one the run was trained on)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrguide.evaluation.galleries import INDEX, compare_runs, explain_run

    for flag in ("per_group", "per_class"):
        if getattr(args, flag) < 1:
            raise CxrGuideError(f"--{flag.replace('_', '-')}: must be at least 1")
    if args.compare is not None:
        if args.out is None:
            raise CxrGuideError("explain --compare: give --out DIR")
        index = compare_runs(
            args.compare,
            args.out,
            args.paths,
            split=args.split,
            method=args.method,
            per_class=args.per_class,
            data=args.data,
            device=args.device,
        )
        written = ["compare.png"]
    else:
        if not args.paths:
            raise CxrGuideError("explain: give a RUN folder (or --compare RUN1 RUN2 ...)")
        run_dir, images = Path(args.paths[0]), args.paths[1:]
        out = args.out or run_dir / "explain"
        args.out = out
        index = explain_run(
            run_dir,
            out,
            images,
            split=args.split,
            method=args.method,
            per_group=args.per_group,
            data=args.data,
            device=args.device,
        )
        written = ["images.png"] if images else None
    for fig in index["figures"]:
        if written is None or fig["file"] in written:
            print(f"{args.out / fig['file']}: {fig['title']}")
    print(f"index: {args.out / INDEX}")
    return 0
