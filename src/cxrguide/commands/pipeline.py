"""`cxrguide pipeline --config FILE.yaml [--out DIR]`: the whole chain, cached, resumable steps."""

from __future__ import annotations

import argparse

from cxrguide.config import PipelineConfig, add_config_flags, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pipeline",
        help="run everything: data -> lungs -> Stage I/II/III -> evaluate -> explain -> report",
        description="Runs the whole chain from one YAML (configs/quickstart.yaml is the default "
        "of 'make run'). Steps whose config and inputs are unchanged are reused; a killed "
        "pipeline resumes at the step (and epoch) where it stopped.",
    )
    add_config_flags(parser, PipelineConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrguide.pipeline.run import run_pipeline

    cfg = config_from_args(PipelineConfig, args)
    results = run_pipeline(cfg)
    print("\nsteps:")
    for r in results.values():
        took = f"{r.seconds:.0f} s" if r.status == "ran" else "-"
        print(f"  {r.name:<14} {r.status:<7} {took}")
    report = results.get("report")
    if report is not None:
        print(f"report: {report.outputs.get('report')}")
    return 0
