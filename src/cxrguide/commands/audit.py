"""`cxrguide audit PREP [--lungs RUN] [--predictions CSV] [--out DIR]`: is the class confounded
with the source, and do a model's answers follow what lies outside the lungs?

Reports and never refuses (exit 0 whatever it finds); a folder that is not a finished
``prepare`` output is a one-line error (exit 2). With ``--lungs RUN`` the lung masks for the
outside-lung probe are predicted into ``OUT/lungs/`` (PREP is left untouched).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrguide.config import AuditConfig, add_config_flags, config_from_args
from cxrguide.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "audit",
        help="class x source table and warnings when the source predicts the class",
        description="Audit a prepared set for source/class confounding: the class x source "
        "table, Cramer's V, the source-prior rule against the majority class, a small "
        "classifier on the films with the lungs blanked out, and per-source image statistics. "
        "Writes audit.json and audit.md (default PREP/audit/) and prints a summary.",
    )
    parser.add_argument(
        "data",
        type=Path,
        metavar="PREP",
        nargs="?",
        default=None,
        help="a folder written by 'cxrguide prepare'",
    )
    add_config_flags(parser, AuditConfig, exclude=("data",))
    parser.set_defaults(func=run)


def lung_masks_from_run(cfg: AuditConfig, out: Path) -> Path:
    """Predict PREP's lung masks with ``cfg.lungs`` into ``out/lungs``; return the cache path."""
    from cxrguide.config import LungsPredictConfig
    from cxrguide.lungs.predict import predict_prepared

    pcfg = LungsPredictConfig(run=cfg.lungs, data=cfg.data, out=out / "lungs", device=cfg.device)
    return predict_prepared(pcfg).masks


def run(args: argparse.Namespace) -> int:
    from cxrguide.data.audit import audit_prepared, open_finished, read_predictions

    cfg = config_from_args(AuditConfig, args)
    if cfg.data is None:
        raise ConfigError("data: give PREP (a folder written by 'cxrguide prepare')")
    open_finished(Path(cfg.data))  # bad input fails before any lung prediction
    read_predictions(cfg.predictions)
    out = Path(cfg.out) if cfg.out else Path(cfg.data) / "audit"
    masks = lung_masks_from_run(cfg, out) if cfg.lungs else None
    result = audit_prepared(
        cfg.data,
        out,
        lung_masks=masks,
        seed=cfg.seed,
        probe_side=cfg.probe_side,
        probe_margin=cfg.probe_margin,
        probe_max_images=cfg.probe_max_images,
        predictions=cfg.predictions,
    )
    print("\n".join(result.notes))
    print(f"wrote {result.out}/audit.json and audit.md")
    return 0
