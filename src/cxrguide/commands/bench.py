"""`cxrguide bench ACTION`: benchmarks that check the study's claims on controlled data.

``shortcut``: Stage II vs Stage III attention variants on synthetic phantoms whose markers
give the class away (see :mod:`cxrguide.experiments.shortcut`). ``sources``: the cross-source
study, leave one source out (see :mod:`cxrguide.experiments.sources`). Each action is a subcommand,
so further benchmarks join as siblings.
"""

from __future__ import annotations

import argparse

from cxrguide.config import (
    ShortcutBenchConfig,
    SourcesBenchConfig,
    add_config_flags,
    config_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="benchmarks of the study's claims (shortcut: does guided attention ignore markers?)",
        description="Benchmarks on controlled data. 'shortcut' trains the same backbone with "
        "Stage II and with each Stage III attention variant on synthetic phantoms with "
        "class-revealing markers, and reports accuracy on clean and marker-swapped test films "
        "and where Grad-CAM looks.",
    )
    actions = parser.add_subparsers(dest="action")
    actions.required = True
    shortcut = actions.add_parser(
        "shortcut",
        help="Stage II vs Stage III variants on shortcut-laden synthetic phantoms",
        description="Synthesise phantoms (--shortcut-rate 0.95), prepare them, take the lung "
        "masks from the generator (or a lung RUN), train a Stage II run per seed, continue it "
        "with every variant on the same budget (the study's order), and write "
        "DIR/shortcut_from_stage2.md (table, mean +- sd over seeds) and "
        "DIR/shortcut_from_stage2_runs.csv. --start scratch: every variant starts from the "
        "seeded random network instead (DIR/shortcut.md). Rerunning resumes.",
    )
    add_config_flags(shortcut, ShortcutBenchConfig)
    shortcut.set_defaults(func=run_shortcut)
    sources = actions.add_parser(
        "sources",
        help="leave one source out: internal vs external accuracy per variant",
        description="For every source of PREP with enough films, train each variant (Stage I, "
        "Stage II, Stage III modes, class x source balanced '-group' variants) without that "
        "source and test on it (external), and compare with the accuracy on other patients "
        "of the same source when it is in training (internal). Also per variant: a linear "
        "source probe on the penultimate features, worst class x source group, ECE and OOD "
        "AUROC on the held-out source. Writes DIR/sources.json, sources.csv, sources.md and "
        "sources.png; rerunning resumes. See docs/cross-source.md.",
    )
    add_config_flags(sources, SourcesBenchConfig)
    sources.set_defaults(func=run_sources)


def run_shortcut(args: argparse.Namespace) -> int:
    from cxrguide.experiments.phantom_body import with_resolved_weights
    from cxrguide.experiments.shortcut import run_benchmark

    cfg = config_from_args(ShortcutBenchConfig, args)
    cfg = with_resolved_weights(cfg, [cfg.backbone])
    md, _ = run_benchmark(cfg)
    print(md)
    stem = "shortcut" if cfg.start == "scratch" else "shortcut_from_stage2"
    print(f"wrote {cfg.out}/{stem}.md and {cfg.out}/{stem}_runs.csv")
    return 0


def run_sources(args: argparse.Namespace) -> int:
    from cxrguide.experiments.sources import run_study

    cfg = config_from_args(SourcesBenchConfig, args)
    if cfg.weights == "phantom":
        from dataclasses import replace

        from cxrguide.experiments.phantom_body import resolve_weights

        cfg = replace(cfg, weights=resolve_weights(cfg.weights, [cfg.backbone]))
    md, study = run_study(cfg)
    print(md)
    if "partial" not in study:
        print(f"wrote {cfg.out}/sources.json, sources.csv, sources.md and sources.png")
    return 0
