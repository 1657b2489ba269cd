"""`cxrguide pretrain --backbone NAME`: a body trained on clean phantoms (the offline stand-in
for ImageNet) with its model card; `--weights phantom` elsewhere builds the same on first use."""

from __future__ import annotations

import argparse

from cxrguide.config import add_config_flags, config_from_args
from cxrguide.config.pretrain import PretrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pretrain",
        help="train a backbone on clean synthetic phantoms (offline stand-in for ImageNet)",
        description="Draws clean phantoms (no class-specific markers; its own seed, so no film "
        "is shared with the study's data), trains the whole backbone on them (AdamW, one-cycle), "
        "measures accuracy on held-out patients, and writes phantom-<backbone>.safetensors with "
        "its model card (.json and .md). Without --out it fills the cache that '--weights "
        "phantom' reads. Runs record the body as phantom:<sha256>, never as ImageNet. A killed "
        "build resumes from its last epoch.",
    )
    add_config_flags(parser, PretrainConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrguide.experiments.phantom_body import pretrain

    cfg = config_from_args(PretrainConfig, args)
    result = pretrain(cfg)
    print(
        f"{result.body}: held-out clean accuracy {result.test_accuracy:.3f} "
        f"({result.seconds:.0f} s); card {result.card}; label phantom:{result.sha256}"
    )
    return 0
