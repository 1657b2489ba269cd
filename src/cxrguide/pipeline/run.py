"""`cxrguide pipeline`: synth or real sources -> prepare -> lungs -> audit -> Stage I -> tune
-> Stage II -> Stage III -> evaluate -> explain -> report, as cached steps (see :mod:`.steps`).

Every training step runs with ``resume`` on: a pipeline killed mid-epoch restarts at that step
and continues from the run's last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from cxrguide.config import (
    AuditConfig,
    LungsPredictConfig,
    LungsPrepareConfig,
    LungsTrainConfig,
    PipelineConfig,
    PrepareConfig,
    SynthConfig,
    TrainConfig,
    TuneConfig,
    from_dict,
    save_yaml,
)
from cxrguide.config.pipeline import ExplainOptions, ReportOptions
from cxrguide.config.weights import WeightsSpec
from cxrguide.data.audit import audit_prepared
from cxrguide.data.summary import summary_text
from cxrguide.errors import ConfigError
from cxrguide.pipeline.steps import StepResult, StepRunner

_log = logging.getLogger(__name__)


def _section(
    cls: type, section: dict[str, Any], name: str, wiring: dict[str, Any], **defaults: Any
) -> Any:
    """The step's typed config: defaults (seed...) < the YAML section < the pipeline's wiring
    (paths between steps, the stage), which a section cannot override."""
    data = {**defaults, **section, **wiring}
    return from_dict(
        cls, {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}, f"pipeline.{name}"
    )


@dataclasses.dataclass
class _Plan:
    """Every step's typed config, built (and so validated) before the first step runs."""

    synth: SynthConfig | None
    prepare: PrepareConfig
    lungs_prepare: LungsPrepareConfig
    lungs_train: LungsTrainConfig
    lungs_predict: LungsPredictConfig
    stage1: TrainConfig
    tune: TuneConfig | None
    stage2: TrainConfig
    stage3: TrainConfig
    audit: AuditConfig


def plan(cfg: PipelineConfig) -> _Plan:
    """Check every section against its step's config class; errors name section and field
    (``pipeline.stage2.lr: expected a number``) before anything is written."""
    out, seed = Path(cfg.out), cfg.seed
    synthetic = out / "data/synthetic"
    synth = None
    sources = list(cfg.sources)
    if not sources:
        synth = _section(SynthConfig, cfg.synth, "synth", {"out": synthetic}, seed=seed)
        sources = [f"synthetic={synthetic}"]
    wiring: dict[str, Any] = {"source": sources, "out": out / "prepared"}
    if cfg.label_map is not None:
        if cfg.prepare.get("label_map") is not None:
            raise ConfigError("pipeline: give label_map once (top level or prepare.label_map)")
        wiring["label_map"] = cfg.label_map
    prep = _section(PrepareConfig, cfg.prepare, "prepare", wiring, seed=seed)
    lung_sources = list(cfg.lung_sources) or [f"masks={synthetic}"]
    lp = _section(
        LungsPrepareConfig,
        cfg.lungs_prepare,
        "lungs_prepare",
        {"source": lung_sources, "out": out / "lungs/data"},
        seed=seed,
    )
    lt = _section(
        LungsTrainConfig, cfg.lungs, "lungs", {"data": lp.out, "out": out / "lungs/run"}, seed=seed
    )
    s1 = _section(
        TrainConfig,
        cfg.stage1,
        "stage1",
        {"stage": 1, "data": prep.out, "out": out / "stage1", "resume": True},
        seed=seed,
    )
    tune = None
    if int(cfg.tune.get("trials", 0) or 0) > 0:
        tune = _section(
            TuneConfig,
            cfg.tune,
            "tune",
            {"stage": 1, "data": prep.out, "out": out / "tune"},
            seed=seed,
            **{
                k: v
                for k, v in cfg.stage1.items()
                if k in ("weights", "image_size", "max_epochs", "batch_size")
            },
        )
    s2 = _section(
        TrainConfig,
        cfg.stage2,
        "stage2",
        {
            "stage": 2,
            "from_run": out / "stage1/leaderboard_stage1.csv",
            "out": out / "stage2",
            "resume": True,
            "data": prep.out,
        },
        seed=seed,
    )
    s3 = _section(
        TrainConfig,
        cfg.stage3,
        "stage3",
        {
            "stage": 3,
            "from_run": out / "stage2/leaderboard_stage2.csv",
            "out": out / "stage3",
            "resume": True,
            "data": prep.out,
            "lung_model": lt.out,
        },
        seed=seed,
    )
    audit = _section(
        AuditConfig, cfg.audit, "audit", {"data": prep.out, "out": prep.out / "audit"}, seed=seed
    )
    from_dict(ExplainOptions, cfg.explain, "pipeline.explain")
    from_dict(ReportOptions, cfg.report, "pipeline.report")
    return _Plan(
        synth, prep, lp, lt, LungsPredictConfig(run=lt.out, data=prep.out), s1, tune, s2, s3, audit
    )


def run_pipeline(cfg: PipelineConfig, log=_log.info) -> dict[str, StepResult]:
    p = plan(cfg)  # every section checked before the first step
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "pipeline_config.yaml")
    steps = StepRunner(out, log=log)

    # -- data -----------------------------------------------------------------------------------
    if p.synth is not None:
        synth = p.synth
        steps.run("synth", synth, lambda d: _synth(synth), folder="data/synthetic")
    prep_cfg = p.prepare
    steps.run(
        "prepare",
        prep_cfg,
        lambda d: _prepare(prep_cfg),
        after=("synth",) if "synth" in steps.results else (),
        folder="prepared",
    )

    # -- lungs ----------------------------------------------------------------------------------
    lp, lt, lpred = p.lungs_prepare, p.lungs_train, p.lungs_predict
    steps.run(
        "lungs_prepare",
        lp,
        lambda d: _lungs_prepare(lp),
        after=tuple(s for s in ("synth",) if s in steps.results),
        folder="lungs/data",
    )
    steps.run(
        "lungs_train", lt, lambda d: _lungs_train(lt), after=("lungs_prepare",), folder="lungs/run"
    )
    steps.run(
        "lungs_predict",
        lpred,
        lambda d: _lungs_predict(lpred),
        after=("prepare", "lungs_train"),
        folder="lungs/predict",
    )

    # -- the confounding audit (after prepare; uses the predicted lung masks) ------------------
    audit = p.audit
    steps.run(
        "audit",
        audit,
        lambda d: _audit(audit),
        after=("prepare", "lungs_predict"),
        folder="prepared/audit",
    )

    # -- classifiers ----------------------------------------------------------------------------
    s1, bodies = _resolve_bodies(p.stage1, log)
    s2, s3, tune = p.stage2, p.stage3, p.tune
    if tune is not None and bodies:
        tune = dataclasses.replace(tune, weights=s1.weights)
    steps.run(
        "stage1",
        {"train": s1, "bodies": bodies} if bodies else s1,
        lambda d: _train(s1),
        after=("prepare",),
        folder="stage1",
    )
    board1 = out / "stage1/leaderboard_stage1.csv"
    stage2_after = ["stage1"]
    if tune is not None:
        steps.run("tune", tune, lambda d: _tune(tune, board1), after=("stage1",), folder="tune")
        stage2_after.append("tune")
    steps.run("stage2", s2, lambda d: _train(s2), after=tuple(stage2_after), folder="stage2")
    steps.run(
        "stage3", s3, lambda d: _train(s3), after=("stage2", "lungs_predict"), folder="stage3"
    )

    # -- figures and report ---------------------------------------------------------------------
    bests = [steps.results[s].outputs["best"] for s in ("stage1", "stage2", "stage3")]
    steps.run(
        "explain",
        {"options": cfg.explain, "runs": bests},
        lambda d: _explain(bests, d, cfg.explain),
        after=("stage1", "stage2", "stage3"),
        folder="figures",
    )
    tune_dir = out / "tune" if "tune" in steps.results else None
    steps.run(
        "report",
        {"options": cfg.report},
        lambda d: _report(
            [out / "stage1", out / "stage2", out / "stage3"],
            d,
            out / "figures",
            tune_dir,
            cfg.report,
        ),
        after=("explain", *stage2_after),
        folder="report",
    )
    return steps.results


def _resolve_bodies(s1: TrainConfig, log) -> tuple[TrainConfig, dict[str, str]]:
    """Stage I's ``weights`` resolved as the commands resolve them (``phantom``: the verified
    body files, built on first use in the weight cache); their ``phantom:<sha256>`` labels join
    Stage I's fingerprint, so a rebuilt body re-runs Stage I."""
    from cxrguide.experiments.phantom_body import resolve_bodies
    from cxrguide.training.dispatch import backbones

    if WeightsSpec.parse(s1.weights, "stage1.weights").kind != "phantom":
        return s1, {}
    names = backbones(s1)
    log(f"[pipeline] phantom bodies: {', '.join(names)}")
    weights, labels = resolve_bodies(s1.weights, names, log)
    return dataclasses.replace(s1, weights=weights), labels


def _synth(cfg: SynthConfig) -> dict[str, Any]:
    from cxrguide.data.synthetic.generate import generate_dataset

    result = generate_dataset(cfg)
    return {"folder": str(cfg.out), "images": getattr(result, "n_images", None)}


def _prepare(cfg: PrepareConfig) -> dict[str, Any]:
    from cxrguide.data.prepare import prepare

    result = prepare(cfg)
    _log.info(summary_text(result.out))
    return {"folder": str(result.out), "images": result.n_images, "splits": result.split_counts}


def _audit(cfg: AuditConfig) -> dict[str, Any]:
    result = audit_prepared(
        cfg.data,
        cfg.out,
        seed=cfg.seed,
        probe_side=cfg.probe_side,
        probe_margin=cfg.probe_margin,
        probe_max_images=cfg.probe_max_images,
    )
    _log.info("\n".join(result.notes))
    return {"folder": str(result.out), "warnings": [w["code"] for w in result.audit["warnings"]]}


def _lungs_prepare(cfg: LungsPrepareConfig) -> dict[str, Any]:
    from cxrguide.lungs.prepare import prepare_lungs

    prepare_lungs(cfg)
    return {"folder": str(cfg.out)}


def _lungs_train(cfg: LungsTrainConfig) -> dict[str, Any]:
    from cxrguide.lungs.train import train_lungs

    train_lungs(cfg)
    return {"run": str(cfg.out)}


def _lungs_predict(cfg: LungsPredictConfig) -> dict[str, Any]:
    from cxrguide.lungs.predict import predict_prepared

    predict_prepared(cfg)
    return {"masks": str(cfg.data)}


def _train(cfg: TrainConfig) -> dict[str, Any]:
    from cxrguide.evaluation.evaluate import score_split
    from cxrguide.training.dispatch import train

    rows = train(cfg, score_split)
    best = max(rows, key=lambda r: r["val_accuracy"])
    return {
        "runs": [r["run"] for r in rows],
        "best": best["run"],
        "best_val_accuracy": best["val_accuracy"],
    }


def _best(board: Path) -> str:
    if not board.exists():
        return "mobilenet_v2"  # resolved again once Stage I has written its leaderboard
    return str(pd.read_csv(board).sort_values("val_accuracy", ascending=False).iloc[0]["backbone"])


def _tune(cfg: TuneConfig, board: Path) -> dict[str, Any]:
    """Tune Stage I of the best backbone; its best trial joins the Stage I leaderboard."""

    from cxrguide.training.tune import best_trial, summarize, tune

    cfg = dataclasses.replace(cfg, backbone=_best(board))
    study, folder = tune(cfg)
    files = summarize(study, folder)
    best = best_trial(study)
    if best is not None and best.user_attrs.get("run"):
        table = pd.read_csv(board)
        run = str(best.user_attrs["run"])
        if run not in set(table["run"]):
            row = {"backbone": cfg.backbone, "run": run, "val_accuracy": best.value}
            table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
            table.sort_values("val_accuracy", ascending=False).to_csv(board, index=False)
    return {"folder": str(folder), **{k: str(v) for k, v in files.items()}}


def _explain(bests: list[str], out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Galleries of each stage's best run, and the study's figure: one backbone across stages."""
    from cxrguide.core.runs import read_info
    from cxrguide.evaluation.galleries import compare_runs, explain_run

    per_group = int(options.get("per_group", 2))
    method = options.get("method", "gradcam")
    for run in bests:
        explain_run(run, out / Path(run).parent.name, per_group=per_group, method=method)
    backbone = read_info(bests[-1]).backbone
    lineage = [str(Path(r).parent / f"stage{k}-{backbone}") for k, r in enumerate(bests, 1)]
    lineage = [r for r in lineage if Path(r, "model.yaml").exists()]
    compare_runs(lineage, out, per_class=int(options.get("per_class", 1)), method=method)
    return {"folder": str(out), "compare": str(out / "compare.png")}


def _report(
    runs: list[Path], out: Path, figures: Path, tune: Path | None, options: dict[str, Any]
) -> dict[str, Any]:
    from cxrguide.evaluation.report import build_report

    out.mkdir(parents=True, exist_ok=True)
    path = build_report(runs, out / "report.html", explain_dir=figures, tune=tune, **options)
    return {"report": str(path)}
