"""`cxrguide data summary DIR`: the Table-3-style count table of a prepared folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="look at a prepared dataset (data summary DIR)")
    data_sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True
    summary = data_sub.add_parser("summary", help="source x class x split counts, rejections")
    summary.add_argument("prepared", type=Path, metavar="DIR", help="a folder written by prepare")
    summary.set_defaults(func=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    from cxrguide.data.summary import summary_text

    print(summary_text(args.prepared))
    return 0
