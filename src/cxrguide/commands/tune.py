"""`cxrguide tune`: Optuna search over Stage I/II hyper-parameters; `--show` and `--export`."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrguide.config import TuneConfig, add_config_flags, config_from_args

SHOWN = [
    "trial",
    "state",
    "value",
    "epochs",
    "lr",
    "l2",
    "momentum",
    "batch_size",
    "width_1",
    "width_2",
    "dropout_1",
    "dropout_2",
    "activation",
    "duration_s",
    "retry_of",
    "error",
]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tune",
        help="tune Stage I/II hyper-parameters with Optuna (val accuracy)",
        description="Bayesian search (TPE or GP) over head widths, dropouts, activation, learning "
        "rate, L2 lambda, batch size and momentum, maximising val accuracy; the configured (paper) "
        "values are the first trial and a pruner stops trailing trials early. The study lives in "
        "OUT/study.db, or in any SQLAlchemy database given with --storage: several processes "
        "pointed at one PostgreSQL database share the study. Takes every 'train' flag; each trial "
        "is a run folder OUT/trial-NNNN/stage<k>-<backbone>.",
    )
    add_config_flags(parser, TuneConfig, exclude=("resume", "top"))
    parser.add_argument(
        "--show", metavar="STUDY", help="summarise an existing study instead of tuning"
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="FILE.yaml",
        help="write the best trial as a 'train --config' file",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from cxrguide.training import tune as tuning

    cfg = config_from_args(TuneConfig, args)
    if args.show:
        study, out = tuning.load(args.show, cfg.storage, cfg.out)
    else:
        from cxrguide.evaluation.evaluate import score_split

        if cfg.stage == 1:
            from cxrguide.experiments.phantom_body import with_resolved_weights

            cfg = with_resolved_weights(cfg, [cfg.backbone])
        study, out = tuning.tune(cfg, score_split)
    files = tuning.summarize(study, out)
    frame = tuning.trials_frame(study)
    states = frame.state.value_counts().items() if len(frame) else []
    print(
        f"study {study.study_name}: {len(frame)} trial(s) "
        f"({', '.join(f'{n} {s}' for s, n in states) or 'none run yet'})"
    )
    best = tuning.best_trial(study)
    if best is not None:
        print(f"best: trial {best.number}, val accuracy {best.value:.4f}")
        for name, value in best.params.items():
            print(
                f"  {name:<12} {value:.4g}" if isinstance(value, float) else f"  {name:<12} {value}"
            )
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(frame[[c for c in SHOWN if c in frame.columns]].to_string(index=False))
    for name, path in files.items():
        print(f"{name}: {path}")
    if args.export:
        print(f"exported: {tuning.export_best(study, args.export)}")
    return 0
