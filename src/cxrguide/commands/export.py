"""`cxrguide export RUN --format onnx|torchscript --out FILE`: the classifier as one file.

The file takes ``image`` (B, 1, S, S) gray in [0, 1] (+ ``lung_mask`` for a lung-gated run) and
returns ``probabilities`` and ``logits``; it is checked against PyTorch (within 1e-4) unless
``--no-check``. See :mod:`cxrguide.inference.export`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrguide.config import ExportConfig, add_config_flags, config_from_args
from cxrguide.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a run's classifier to ONNX or TorchScript (with a parity check)",
        description="Write the classifier (lung gate included: the mask is a second input) as "
        "ONNX or TorchScript, then compare it with PyTorch on the same inputs.",
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder from 'cxrguide train'")
    add_config_flags(parser, ExportConfig, exclude=("run",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrguide.inference.export import export_run

    cfg = config_from_args(ExportConfig, args)
    if cfg.run is None or cfg.out is None:
        raise ConfigError("export: give RUN and --out FILE")
    result = export_run(
        cfg.run,
        cfg.format,
        cfg.out,
        opset=cfg.opset,
        check=cfg.check,
        int8=cfg.int8,
        calibration_films=cfg.calibration_films,
        min_agreement=cfg.min_agreement,
        seed=cfg.seed,
        int8_reduce_range=cfg.int8_reduce_range,
    )
    if result.agreement is not None:
        check = (
            f"top-1 agreement with fp32 {result.agreement:.1%} on validation films, "
            f"max |dp| {result.max_abs_diff:.1e}"
        )
    elif result.max_abs_diff is None:
        check = "not checked"
    else:
        check = f"max |dp| vs PyTorch {result.max_abs_diff:.1e}"
    print(
        f"wrote {result.path} ({result.format}; inputs {', '.join(result.inputs)}; "
        f"outputs probabilities, logits; {check})"
    )
    return 0
