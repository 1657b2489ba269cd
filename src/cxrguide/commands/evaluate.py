"""`cxrguide evaluate RUN [--split test]`: metrics.json, predictions CSV and a printed table."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="accuracy, per-class precision/recall/specificity/F1, AUC with 95%% CIs, per source",
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="a run folder written by train")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--data", type=Path, default=None, metavar="PREP",
                        help="prepared folder (default: the one the run was trained on)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrguide.evaluation.evaluate import evaluate_run
    from cxrguide.evaluation.metrics import format_report

    report = evaluate_run(args.run, args.split, args.data, device=args.device,
                          batch_size=args.batch_size, n_boot=args.bootstrap, seed=args.seed)  # fmt: skip
    print(f"{args.run} [{args.split}] {report['backbone']} stage {report['stage']}")
    print(format_report(report))
    print(f"wrote {args.run}/metrics_{args.split}.json and predictions_{args.split}.csv")
    return 0
