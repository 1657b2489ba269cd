"""`cxrguide synth --out DIR [--n 900] [--size 256] [--seed 0] [--shortcut-rate 0.0] ...`."""

from __future__ import annotations

import argparse

from cxrguide.config import SynthConfig, add_config_flags, config_from_args
from cxrguide.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "synth",
        help="draw synthetic chest X-ray phantoms with exact lung masks, lesions and markers",
        description="Write procedurally drawn frontal chest X-rays (Normal / Pneumonia / "
        "COVID-19) with exact lung and lesion masks, V7-style lung polygons, acquisition styles "
        "acting as sources, and optional shortcut markers, in the layout `prepare --source "
        "synthetic=DIR` and `lungs train` read. --preview FILE.png draws a contact sheet "
        "(alone, or next to --out).",
    )
    add_config_flags(parser, SynthConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrguide.data.synthetic import draw_preview, generate_dataset

    cfg = config_from_args(SynthConfig, args)
    if cfg.out is None and cfg.preview is None:
        raise ConfigError("out: give --out DIR (and/or --preview FILE.png)")
    if cfg.out is not None:
        result = generate_dataset(cfg)
        print(f"synth: {result.summary()}")
    if cfg.preview is not None:
        path = draw_preview(cfg, cfg.preview)
        print(f"synth: contact sheet written to {path}")
    return 0
