"""`cxrguide train --stage 1|2|3 ...`: one run folder per model plus a stage leaderboard."""

from __future__ import annotations

import argparse

from cxrguide.config import TrainConfig, add_config_flags, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train classifiers: Stage I (frozen body), II (fine-tune the best), III (guided "
        "attention)",
        description="Stage I trains the paper's head on a frozen backbone (features cached once); "
        "Stage II fine-tunes body and head of the best Stage I runs (--from LEADERBOARD --top k); "
        "Stage III fine-tunes the best Stage II runs with guided attention (lung gate, GAIN, "
        "lung-mask supervision: --attention; needs 'cxrguide lungs predict' masks). "
        "--resume continues a killed run with the same settings. Runs under torchrun use DDP.",
    )
    add_config_flags(parser, TrainConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrguide.core.engine import is_main_process
    from cxrguide.evaluation.evaluate import score_split
    from cxrguide.training.dispatch import LEADERBOARD, backbones, train

    cfg = config_from_args(TrainConfig, args)
    if cfg.stage == 1 or (cfg.stage == 3 and cfg.from_run is None):  # the stages that build bodies
        from cxrguide.experiments.phantom_body import with_resolved_weights

        cfg = with_resolved_weights(cfg, backbones(cfg))
    rows = train(cfg, score_split)
    if is_main_process():
        print(
            f"stage {cfg.stage}: {len(rows)} run(s); leaderboard "
            f"{cfg.out / LEADERBOARD.format(stage=cfg.stage)}"
        )
        for r in sorted(rows, key=lambda r: -r["val_accuracy"]):
            print(
                f"  {r['backbone']:<22} val {r['val_accuracy']:.3f}  test {r['test_accuracy']:.3f}"
                f"  {r['run']}"
            )
    return 0
