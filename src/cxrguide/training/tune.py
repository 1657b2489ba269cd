"""Optuna search over the head and optimiser of Stage I (or the optimiser of Stage II).

The study tuned its hyper-parameters by Bayesian optimisation of validation accuracy with a cloud
service; this module does it with Optuna. Every trial is an ordinary run folder
(``OUT/trial-NNNN/stage<k>-<backbone>``), so Stage I trials read the prepared folder's feature
cache and cost seconds. The study lives in any SQLAlchemy database (a local SQLite file by
default), so several ``cxrguide tune`` processes pointed at one database share one study.

Robustness choices: a trial that raises is recorded as failed with its error (user attr
``error``) and the study goes on; a trial whose worker died (killed process on this host, or no
heartbeat from another host) is failed and queued again, resuming its own run folder. ``trials``
is what one command runs (as Optuna's ``n_trials``); ``total_trials`` caps the study over all
its workers, so cooperating workers stop together.

Seeds: every trial trains with the configured ``seed`` (common random numbers: trials differ only
in their hyper-parameters, and a randomly initialised body stays the one the Stage I feature cache
was computed from); the sampler is re-seeded per trial from (seed, trial number), so one worker
repeats its suggestions exactly and concurrent workers never draw the same random points.

The search space lives in :mod:`.tune_space`, storage and dead-worker recovery in
:mod:`.tune_storage`, what ``--show`` / ``--export`` read and draw in :mod:`.tune_report`; all
three are re-exported here.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import optuna

from cxrguide.config import TrainConfig, TuneConfig, to_dict
from cxrguide.core.checkpoint import load_checkpoint
from cxrguide.core.device import resolve_device
from cxrguide.core.runs import read_info
from cxrguide.data.datasets import Prepared
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.models.head import ACTIVATIONS
from cxrguide.training.dispatch import parents
from cxrguide.training.features import pooled_features, stage1_rows
from cxrguide.training.stage_run import Scorer, effective_image_size
from cxrguide.training.tune_report import (  # noqa: F401  (re-exported: the module's API)
    best_config,
    best_trial,
    export_best,
    load,
    plot_history,
    plot_importance,
    summarize,
    trials_frame,
)
from cxrguide.training.tune_space import (  # noqa: F401  (re-exported: the module's API)
    SPACE_FIELDS,
    PerTrialSeededSampler,
    apply_params,
    first_params,
    make_pruner,
    suggest,
    train_config,
)
from cxrguide.training.tune_storage import (  # noqa: F401  (re-exported: the module's API)
    HOST,
    STUDY_DB,
    default_out,
    default_url,
    finished_count,
    make_storage,
    recover_dead_trials,
    retry_trial,
    safe_url,
)

# ---- study -------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything a tuning run resolved from its config before the first trial."""

    cfg: TuneConfig
    base: TrainConfig
    backbone: str
    study_name: str
    out: Path
    url: str
    prepared: Prepared
    parent: Path | None = None


def plan(cfg: TuneConfig) -> Plan:
    from cxrguide.models.zoo import get_spec

    unknown = sorted(set(cfg.activations) - set(ACTIVATIONS))
    if unknown:
        raise ConfigError(f"activations: unknown {unknown} (known: {', '.join(ACTIVATIONS)})")
    parent = None
    if cfg.stage == 2:
        parent = parents(dataclasses.replace(train_config(cfg), top=1))[0]
        info = read_info(parent)
        backbone, data = info.backbone, cfg.data or info.data
    else:
        if "," in cfg.backbone or cfg.backbone == "all":
            raise ConfigError(f"backbone: tune one backbone at a time, not {cfg.backbone!r}")
        if cfg.data is None:
            raise ConfigError("data: give --data PREP (a folder written by 'cxrguide prepare')")
        backbone, data = get_spec(cfg.backbone).name, cfg.data
    prepared = Prepared.open(data)
    name = cfg.study or f"stage{cfg.stage}-{backbone}"
    out = Path(cfg.out) if cfg.out else default_out(name)
    url = cfg.storage or default_url(out)
    base = train_config(cfg, data=Path(data), backbone=backbone, from_run=parent, resume=False)
    return Plan(cfg, base, backbone, name, out, url, prepared, parent)


def _space(cfg: TuneConfig, backbone: str) -> dict[str, Any]:
    return {
        "backbone": backbone,
        "layers": len(cfg.head_widths),
        **{k: to_dict(getattr(cfg, k)) for k in SPACE_FIELDS},
    }


def open_study(p: Plan) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """Create the study, or join it (checking it searches the same space)."""
    cfg = p.cfg
    p.out.mkdir(parents=True, exist_ok=True)
    storage = make_storage(p.url, cfg.heartbeat, cfg.retries)
    sampler = PerTrialSeededSampler(cfg.sampler, cfg.seed, cfg.startup_trials)
    common = dict(
        study_name=p.study_name, storage=storage, sampler=sampler, pruner=make_pruner(cfg)
    )
    space = _space(cfg, p.backbone)
    try:
        study, created = optuna.create_study(direction="maximize", **common), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(**common), False
    if not created:
        theirs = study.user_attrs.get("space")
        if theirs is not None and theirs != space:
            diff = ", ".join(sorted(k for k in space if theirs.get(k) != space[k]))
            raise ConfigError(
                f"study: {p.study_name!r} in {safe_url(p.url)} searches another "
                f"space ({diff} differ); use another --study"
            )
        return study, storage
    if any(p.out.glob("trial-*")):
        optuna.delete_study(study_name=p.study_name, storage=storage)
        raise CxrGuideError(f"{p.out}: holds trial folders of another study; choose another --out")
    study.set_user_attr("space", space)
    study.set_user_attr("base", to_dict(p.base))
    if cfg.paper_first:
        study.enqueue_trial(first_params(p.base), user_attrs={"origin": "configured"})
    return study, storage


class Objective:
    """One trial: train a run folder with the suggested values; its val accuracy is the value."""

    def __init__(self, p: Plan, storage: optuna.storages.BaseStorage, score: Scorer) -> None:
        self.p, self.storage, self.score = p, storage, score

    def __call__(self, trial: optuna.Trial) -> float:
        from cxrguide.training.finetune import stage2
        from cxrguide.training.stage1 import stage1

        p, attrs = self.p, trial.user_attrs
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        resume = bool(attrs.get("resume_dir")) and attrs.get("resume_host") == HOST
        root = Path(attrs["resume_dir"]) if resume else p.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("trial_dir", str(root.resolve()))
        trial.set_user_attr("seed", p.base.seed)
        try:
            cfg = apply_params(
                dataclasses.replace(p.base, out=root, resume=resume), suggest(trial, p.cfg)
            )
            run = root / f"stage{p.base.stage}-{p.backbone}"
            _replay_history(trial, run)
            report = partial(_report, trial, cfg.max_epochs)
            if p.base.stage == 1:
                row = stage1(cfg, p.backbone, p.prepared, self.score, report)
            else:
                assert p.parent is not None
                row = stage2(cfg, p.parent, p.prepared, self.score, report)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            retry_trial(trial.study, self.storage.get_trial(trial._trial_id), p.cfg.retries)
            raise
        except Exception as err:
            trial.set_user_attr("error", " ".join(f"{type(err).__name__}: {err}".split())[:500])
            raise
        for key in ("run", "val_accuracy", "val_macro_f1", "val_macro_auc"):
            value = row.get(key)
            if value is not None:
                trial.set_user_attr(key, value if isinstance(value, str) else float(value))
        return float(row["val_accuracy"])


def _report(trial: optuna.Trial, max_epochs: int, epoch: int, row: dict[str, float]) -> None:
    """Engine callback: per-epoch val accuracy to the pruner; raising stops the trial (never
    after the last epoch: the training is done by then, so pruning would only discard it)."""
    step = int(row["epoch"])
    trial.report(float(row["val_acc"]), step)
    if step < max_epochs and trial.should_prune():
        raise optuna.TrialPruned(
            f"epoch {step}: val accuracy {row['val_acc']:.3f} trails the study"
        )


def _replay_history(trial: optuna.Trial, run: Path) -> None:
    """A resumed trial reports the epochs its checkpoint already holds."""
    last = run / "last.pt"
    if last.exists():
        for row in load_checkpoint(last)["history"]:
            trial.report(float(row["val_acc"]), int(row["epoch"]))


def _warm_feature_cache(p: Plan) -> None:
    """Fill the Stage I feature cache once, under a file lock: workers sharing a prepared folder
    would otherwise all compute it and race on the same partial file."""
    if p.base.stage != 1 or not p.base.feature_cache:
        return

    from cxrguide.models.zoo import create_model

    b = p.base
    model = create_model(
        p.backbone,
        b.weights,
        head_widths=b.head_widths,
        head_dropouts=b.head_dropouts,
        head_activation=b.activation,
        seed=b.seed,
    ).freeze_body()
    folder = p.prepared.root / "features"
    folder.mkdir(exist_ok=True)
    with open(folder / f".{p.backbone}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pooled_features(
            model,
            p.prepared,
            effective_image_size(b, model),
            resolve_device(b.device),
            rows=stage1_rows(p.prepared),
            batch_size=b.batch_size,
            precision=b.precision,
            channels_last=b.channels_last,
        )


def tune(cfg: TuneConfig, score: Scorer) -> tuple[optuna.Study, Path]:
    """Run ``cfg.trials`` trials (Optuna's ``n_trials``), fewer if the study reaches
    ``cfg.total_trials`` finished ones over all its workers first; ``score`` evaluates each
    trial's run (see :data:`~cxrguide.training.stage_run.Scorer`)."""
    p = plan(cfg)
    study, storage = open_study(p)
    _warm_feature_cache(p)
    objective = Objective(p, storage, score)
    for _ in range(cfg.trials):
        recover_dead_trials(study, storage, cfg.retries)
        if cfg.total_trials and finished_count(study) >= cfg.total_trials:
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
    return study, p.out
