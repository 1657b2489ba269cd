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
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from cxrguide.config import TrainConfig, TuneConfig, from_dict, save_yaml, to_dict
from cxrguide.data.datasets import Prepared
from cxrguide.errors import ConfigError, CxrGuideError

STUDY_DB = "study.db"
HOST = socket.gethostname()
# The search space's knobs, recorded with a study so that every worker searches the same space.
SPACE_FIELDS = ("stage", "lr_range", "l2_range", "momentum_range", "batch_sizes", "width_range",
                "dropout_range", "activations")  # fmt: skip


# ---- search space ------------------------------------------------------------------------------


def suggest(trial: optuna.Trial, cfg: TuneConfig) -> dict[str, Any]:
    """Draw one point. Stage II inherits its head from the parent run, so it tunes the optimiser."""
    params: dict[str, Any] = {
        "lr": trial.suggest_float("lr", *cfg.lr_range, log=True),
        "l2": trial.suggest_float("l2", *cfg.l2_range, log=True),
        "momentum": trial.suggest_float("momentum", *cfg.momentum_range),
        "batch_size": trial.suggest_categorical("batch_size", list(cfg.batch_sizes)),
    }
    if cfg.stage == 1:
        for i in range(1, len(cfg.head_widths) + 1):
            params[f"width_{i}"] = trial.suggest_int(f"width_{i}", *cfg.width_range, log=True)
            params[f"dropout_{i}"] = trial.suggest_float(f"dropout_{i}", *cfg.dropout_range)
        params["activation"] = trial.suggest_categorical("activation", list(cfg.activations))
    return params


def first_params(cfg: TrainConfig) -> dict[str, Any]:
    """The configured values (the paper's by default) as search-space parameters."""
    params: dict[str, Any] = {"lr": cfg.lr if cfg.stage == 1 else cfg.finetune_lr, "l2": cfg.l2,
                              "momentum": cfg.momentum, "batch_size": cfg.batch_size}  # fmt: skip
    if cfg.stage == 1:
        for i, (w, d) in enumerate(zip(cfg.head_widths, cfg.head_dropouts, strict=True), 1):
            params[f"width_{i}"], params[f"dropout_{i}"] = w, d
        params["activation"] = cfg.activation
    return params


def apply_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The training config of one trial: ``base`` with the trial's parameters filled in."""
    lr_field = "lr" if base.stage == 1 else "finetune_lr"
    changes: dict[str, Any] = {lr_field: params["lr"], "l2": params["l2"],
                               "momentum": params["momentum"], "batch_size": params["batch_size"]}  # fmt: skip
    if "activation" in params:
        layers = range(1, len(base.head_widths) + 1)
        changes["head_widths"] = [int(params[f"width_{i}"]) for i in layers]
        changes["head_dropouts"] = [float(params[f"dropout_{i}"]) for i in layers]
        changes["activation"] = params["activation"]
    cfg = dataclasses.replace(base, **changes)
    cfg.validate()
    return cfg


def train_config(cfg: TuneConfig, **changes: Any) -> TrainConfig:
    """The ``train`` part of a tune config (the base of every trial)."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    train = TrainConfig(**{n: getattr(cfg, n) for n in names if n != "out"})
    return dataclasses.replace(train, **changes)


# ---- sampler, pruner, storage --------------------------------------------------------------------


def _trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler re-created for every trial with a seed derived from (seed, trial number).

    With one worker the same seed gives the same suggestions; concurrent workers that share a
    seed still draw different points (one seeded sampler per process would make their random
    start-up trials identical). TPE and GP read all history from the storage, so nothing is lost.
    """

    def __init__(self, kind: str, seed: int, startup_trials: int) -> None:
        self.kind, self.seed, self.startup_trials = kind, seed, startup_trials
        self._inner = self._make(seed)

    def _make(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.kind == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.startup_trials)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.startup_trials,
                                          multivariate=True, constant_liar=True)  # fmt: skip

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._make(_trial_seed(self.seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[no-untyped-def]
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """Pruners see the per-epoch val accuracy at step = epoch (1-based)."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials,
                                           n_warmup_steps=cfg.prune_warmup)  # fmt: skip
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, cfg.prune_warmup),
                                              max_resource=cfg.max_epochs)  # fmt: skip
    return optuna.pruners.NopPruner()


def safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<storage URL>"


def make_storage(url: str, heartbeat: int = 0, retries: int = 0) -> optuna.storages.RDBStorage:
    """An RDB storage; with ``heartbeat`` a trial silent for twice that long is failed and retried."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}  # wait for other local writers
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                      heartbeat_stale_trial_callback=partial(retry_trial, retries=retries))  # fmt: skip
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (IntegrityError, ProgrammingError):
            if attempt == 3:
                raise
            time.sleep(0.5 + attempt)  # workers starting together race to create the tables
        except Exception as err:  # bad URL, missing driver, server down: one clear line
            reason = " ".join(str(err).split())[:300]
            raise CxrGuideError(f"storage {safe_url(url)}: cannot open ({reason})") from None
    raise AssertionError("unreachable")


# ---- dead workers and retries ----------------------------------------------------------------------


def retry_trial(study: optuna.Study, trial: FrozenTrial, retries: int) -> None:
    """Queue a failed trial's parameters again; the retry resumes the same run folder."""
    attempt = int(trial.user_attrs.get("attempt", 1))
    if attempt > retries:
        return
    attrs = {"retry_of": trial.number, "attempt": attempt + 1}
    if "trial_dir" in trial.user_attrs:
        attrs.update(resume_dir=trial.user_attrs["trial_dir"], resume_host=trial.user_attrs["host"])
    study.enqueue_trial(trial.params, user_attrs=attrs)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():  # between trials this process runs none, so a record of ours is stale
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that nobody reaped yet is a zombie: dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def recover_dead_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, retries: int
) -> list[int]:
    """Fail (and queue again) RUNNING trials of this host whose process is gone.

    The heartbeat covers other hosts but only after its grace period; a run killed here is known
    dead at once. The state change is atomic, so two workers never both retry one trial.
    """
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != HOST or pid is None or _pid_alive(int(pid)):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", f"worker {HOST}:{pid} ended during the trial")  # fmt: skip
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                retry_trial(study, storage.get_trial(t._trial_id), retries)
                lost.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
    return lost


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards ``trials``: done, pruned, running, or failed and not retried."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(t.state in counted or (t.state == TrialState.FAIL and t.number not in retried)
               for t in trials)  # fmt: skip


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


def default_out(study_name: str) -> Path:
    return Path("runs") / f"tune-{study_name}"


def plan(cfg: TuneConfig) -> Plan:
    from cxrguide.models.head import ACTIVATIONS
    from cxrguide.models.zoo import get_spec
    from cxrguide.training.runs import read_info
    from cxrguide.training.stages import parents

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
    url = cfg.storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
    base = train_config(cfg, data=Path(data), backbone=backbone, from_run=parent, resume=False)
    return Plan(cfg, base, backbone, name, out, url, prepared, parent)


def _space(cfg: TuneConfig, backbone: str) -> dict[str, Any]:
    return {"backbone": backbone, "layers": len(cfg.head_widths),
            **{k: to_dict(getattr(cfg, k)) for k in SPACE_FIELDS}}  # fmt: skip


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
            raise ConfigError(f"study: {p.study_name!r} in {safe_url(p.url)} searches another "
                              f"space ({diff} differ); use another --study")  # fmt: skip
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

    def __init__(self, p: Plan, storage: optuna.storages.BaseStorage) -> None:
        self.p, self.storage = p, storage

    def __call__(self, trial: optuna.Trial) -> float:
        from cxrguide.training import stages

        p, attrs = self.p, trial.user_attrs
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        resume = bool(attrs.get("resume_dir")) and attrs.get("resume_host") == HOST
        root = Path(attrs["resume_dir"]) if resume else p.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("trial_dir", str(root.resolve()))
        trial.set_user_attr("seed", p.base.seed)
        try:
            cfg = apply_params(dataclasses.replace(p.base, out=root, resume=resume),
                               suggest(trial, p.cfg))  # fmt: skip
            run = root / f"stage{p.base.stage}-{p.backbone}"
            _replay_history(trial, run)
            report = partial(_report, trial, cfg.max_epochs)
            if p.base.stage == 1:
                row = stages.stage1(cfg, p.backbone, p.prepared, on_epoch_end=report)
            else:
                assert p.parent is not None
                row = stages.stage2(cfg, p.parent, p.prepared, on_epoch_end=report)
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
        import torch

        for row in torch.load(last, map_location="cpu", weights_only=False)["history"]:
            trial.report(float(row["val_acc"]), int(row["epoch"]))


def _warm_feature_cache(p: Plan) -> None:
    """Fill the Stage I feature cache once, under a file lock: workers sharing a prepared folder
    would otherwise all compute it and race on the same partial file."""
    if p.base.stage != 1 or not p.base.feature_cache:
        return
    import fcntl

    from cxrguide.models.zoo import create_model
    from cxrguide.training.engine import resolve_device
    from cxrguide.training.features import pooled_features

    b = p.base
    model = create_model(p.backbone, b.weights, head_widths=b.head_widths,
                         head_dropouts=b.head_dropouts, head_activation=b.activation,
                         seed=b.seed).freeze_body()  # fmt: skip
    folder = p.prepared.root / "features"
    folder.mkdir(exist_ok=True)
    with open(folder / f".{p.backbone}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pooled_features(model, p.prepared, b.image_size or model.input_size[0],
                        resolve_device(b.device), batch_size=b.batch_size,
                        precision=b.precision, channels_last=b.channels_last)  # fmt: skip


def tune(cfg: TuneConfig) -> tuple[optuna.Study, Path]:
    """Run ``cfg.trials`` trials (Optuna's ``n_trials``), fewer if the study reaches
    ``cfg.total_trials`` finished ones over all its workers first."""
    p = plan(cfg)
    study, storage = open_study(p)
    _warm_feature_cache(p)
    objective = Objective(p, storage)
    for _ in range(cfg.trials):
        recover_dead_trials(study, storage, cfg.retries)
        if cfg.total_trials and finished_count(study) >= cfg.total_trials:
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
    return study, p.out


# ---- show / export -----------------------------------------------------------------------------


def load(study_name: str, storage: str | None, out: Path | None) -> tuple[optuna.Study, Path]:
    """An existing study (``--show``); the default storage is OUT/study.db."""
    out = Path(out) if out else default_out(study_name)
    if storage is None and not (out / STUDY_DB).exists():
        raise CxrGuideError(f"{out / STUDY_DB}: no study database (give --storage URL or --out)")
    url = storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
    rdb = make_storage(url)
    try:
        return optuna.load_study(study_name=study_name, storage=rdb), out
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(rdb)) or "none"
        raise CxrGuideError(
            f"study: no study {study_name!r} in {safe_url(url)} (studies there: {names})"
        ) from None


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        error = a.get("error", "")
        if t.state == TrialState.FAIL and not error:
            error = "lost: its worker stopped sending heartbeats"
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     "epochs": len(t.intermediate_values), **t.params,
                     "duration_s": t.duration.total_seconds() if t.duration else math.nan,
                     "retry_of": a.get("retry_of"), "worker": f"{a.get('host', '')}:{a.get('pid', '')}",
                     "run": a.get("run", ""), "error": error})  # fmt: skip
    return pd.DataFrame(rows)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def best_config(study: optuna.Study) -> TrainConfig:
    """The best trial as a ``train`` config (what ``--export`` writes)."""
    best = best_trial(study)
    if best is None:
        raise CxrGuideError(f"study {study.study_name!r}: no completed trial yet")
    base = from_dict(TrainConfig, study.user_attrs["base"], f"study {study.study_name} base")
    return apply_params(base, best.params)


def export_best(study: optuna.Study, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_yaml(best_config(study), path)
    return path


def plot_history(study: optuna.Study, path: Path) -> Path:
    """Val accuracy per trial, pruned trials at their last epoch, and the running best."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.PRUNED]
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", zorder=3)
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="grey", label="pruned")
    if done:
        xs = [t.number for t in done]
        ax.step(xs, np.maximum.accumulate([t.value for t in done]), where="post", color="C3",
                label="best so far")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel="val accuracy", title=f"optimisation history: {study.study_name}")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=120)
    return path


def plot_importance(study: optuna.Study, path: Path) -> Path | None:
    """Optuna's parameter importances (PED-ANOVA in 5.x); None when too few trials completed."""
    from matplotlib.figure import Figure

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return None
    try:
        with warnings.catch_warnings():  # PED-ANOVA warns when few trials make all shares equal
            warnings.simplefilter("ignore", UserWarning)
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None
    if not importances:
        return None
    names = list(importances)[::-1]
    fig = Figure(figsize=(6.4, 0.4 * len(names) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set(xlabel="importance (share)", title=f"parameter importance: {study.study_name}")
    fig.savefig(path, dpi=120)
    return path


def summarize(study: optuna.Study, out: Path) -> dict[str, Path]:
    """Write trials.csv, best.yaml and the two plots into ``out``; return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"trials": out / "trials.csv"}
    trials_frame(study).to_csv(files["trials"], index=False)
    files["history_plot"] = plot_history(study, out / "optimization_history.png")
    importance = plot_importance(study, out / "param_importances.png")
    if importance is not None:
        files["importance_plot"] = importance
    if best_trial(study) is not None and "base" in study.user_attrs:
        files["best"] = export_best(study, out / "best.yaml")
    return files
