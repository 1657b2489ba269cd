"""`cxrguide evaluate RUN [--split test]`: metrics.json, predictions CSV and a printed table.

`cxrguide evaluate --onnx MODEL.onnx --data PREP` scores an external 3-class ONNX model (e.g. a
converted COVID-Net CXR-3/4 checkpoint) on the same split, writing the same files into
``--out`` (default ``<model stem>_eval/`` beside the model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrguide.errors import CxrGuideError

_ONNX_ONLY = ("onnx_size", "onnx_layout", "onnx_channels", "onnx_classes", "onnx_output")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="accuracy, per-class precision/recall/specificity/F1, AUC with 95%% CIs, per source",
    )
    parser.add_argument(
        "run",
        type=Path,
        metavar="RUN",
        nargs="?",
        default=None,
        help="a run folder written by train (or give --onnx instead)",
    )
    parser.add_argument(
        "--split",
        default="test",
        help="split to evaluate (default: test; all: every film of --data)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PREP",
        help="prepared folder (default: the one the run was trained on; required with --onnx)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--calibration",
        choices=("temperature", "vector"),
        default=None,
        help="calibration to apply (refits the run's statistics when it holds "
        "another; default: what the run holds)",
    )
    parser.add_argument(
        "--false-flag-rate",
        type=float,
        default=None,
        metavar="RATE",
        help="share of validation films above the OOD threshold (refits when it "
        "differs; default: what the run holds, 0.05 when fitted afresh)",
    )
    onnx = parser.add_argument_group("external ONNX model (instead of RUN)")
    onnx.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="MODEL.onnx",
        help="evaluate this 3-class ONNX model (e.g. a converted COVID-Net CXR-4A)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: the run folder; with --onnx "
        "<model stem>_eval/ beside the model)",
    )
    onnx.add_argument(
        "--onnx-size",
        type=int,
        default=None,
        metavar="PX",
        help="input side when the graph does not fix it (default: cache size)",
    )
    onnx.add_argument(
        "--onnx-layout",
        choices=("nchw", "nhwc"),
        default=None,
        help="input layout (default: read from the graph)",
    )
    onnx.add_argument(
        "--onnx-channels",
        type=int,
        choices=(1, 3),
        default=None,
        help="input channels (default: read from the graph, else 3)",
    )
    onnx.add_argument(
        "--onnx-normalize",
        choices=("none", "imagenet", "minus1to1"),
        default="none",
        help="pixel scaling after [0, 1] (COVID-Net: none)",
    )
    onnx.add_argument(
        "--onnx-classes",
        default=None,
        metavar="A,B,C",
        help="output class order (default: Normal,Pneumonia,COVID-19)",
    )
    onnx.add_argument(
        "--onnx-output",
        default=None,
        metavar="NAME",
        help="output tensor to read when the graph has several 3-wide outputs",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrguide.evaluation.metrics import format_report

    if (args.run is None) == (args.onnx is None):
        raise CxrGuideError("evaluate: give exactly one of RUN or --onnx MODEL.onnx")
    if args.onnx is not None:
        return _run_onnx(args, format_report)
    used = [f"--{k.replace('_', '-')}" for k in _ONNX_ONLY if getattr(args, k) is not None]
    if used or args.onnx_normalize != "none":
        flags = ", ".join(used) or "--onnx-normalize"
        raise CxrGuideError(f"evaluate: {flags} only apply with --onnx MODEL.onnx")
    from cxrguide.evaluation.evaluate import evaluate_run
    from cxrguide.evaluation.reliability_report import format_reliability
    from cxrguide.files import check_writable_dir

    if args.out is not None:  # before the work: an unwritable place fails now, in one line
        check_writable_dir(args.out, "out")

    if args.false_flag_rate is not None and not 0 < args.false_flag_rate < 1:
        raise CxrGuideError("false_flag_rate: must be between 0 and 1")
    report = evaluate_run(
        args.run,
        args.split,
        args.data,
        device=args.device,
        batch_size=args.batch_size,
        n_boot=args.bootstrap,
        seed=args.seed,
        out=args.out,
        calibration=args.calibration,
        false_flag_rate=args.false_flag_rate,
    )
    print(f"{args.run} [{args.split}] {report['backbone']} stage {report['stage']}")
    print(format_report(report))
    print("\n".join(format_reliability(report)))
    out = args.out or args.run
    print(
        f"wrote {out}/metrics_{args.split}.json, predictions_{args.split}.csv and "
        f"reliability_{args.split}.png"
    )
    return 0


def _run_onnx(args: argparse.Namespace, format_report) -> int:
    from cxrguide.evaluation.external_onnx import default_out_dir, evaluate_onnx
    from cxrguide.labels import CLASSES

    if args.data is None:
        raise CxrGuideError("evaluate --onnx: give --data PREP (a folder from 'cxrguide prepare')")
    out = args.out or default_out_dir(args.onnx)
    report = evaluate_onnx(
        args.onnx,
        args.data,
        args.split,
        out,
        size=args.onnx_size,
        layout=args.onnx_layout,
        channels=args.onnx_channels,
        normalize=args.onnx_normalize,
        classes=args.onnx_classes or CLASSES,
        output=args.onnx_output,
        batch_size=args.batch_size,
        n_boot=args.bootstrap,
        seed=args.seed,
    )
    feed = report["onnx"]
    print(
        f"{args.onnx} [{args.split}] {feed['layout']} {feed['channels']}x{feed['height']}x"
        f"{feed['width']} normalize {feed['normalize']}, output {feed['output']!r} "
        f"({feed['output_kind']})"
    )
    if feed.get("lung_masks"):
        print(f"lung masks ({feed['lung_mask_input']!r}) from {feed['lung_masks']}")
    print(format_report(report))
    print(f"wrote {out}/metrics_{args.split}.json and predictions_{args.split}.csv")
    return 0
