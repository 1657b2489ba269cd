"""`cxrguide prepare --source KIND[:NAME]=PATH ... --out DIR`."""

from __future__ import annotations

import argparse

from cxrguide.config import PrepareConfig, add_config_flags, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prepare",
        help="merge public sources into one de-duplicated, leakage-free 8:1:1 manifest",
        description="Merge sources (ieee8023, actualmed, figure1, radiography, rsna, synthetic; "
        "anyone's data as folder[:NAME]=DIR with one subfolder per label, or table[:NAME]=CSV) "
        "into manifest.csv + an image cache, with duplicates removed and a patient-grouped, "
        "stratified 8:1:1 split. Labels of folder/table sources go through a label map "
        "(default in docs/sources.md; --label-map FILE.yaml over it).",
    )
    add_config_flags(parser, PrepareConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrguide.data.prepare import prepare
    from cxrguide.data.summary import summary_text

    cfg = config_from_args(PrepareConfig, args)
    result = prepare(cfg)
    state = "already prepared (reused)" if result.reused else "prepared"
    print(f"{state}: {result.n_images} images in {result.out}")
    print(summary_text(result.out))
    return 0
