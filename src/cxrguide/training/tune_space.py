"""The tuning search space: what a trial draws, how it becomes a train config, the sampler."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from cxrguide.config import TrainConfig, TuneConfig

# The search space's knobs, recorded with a study so that every worker searches the same space.
SPACE_FIELDS = (
    "stage",
    "lr_range",
    "l2_range",
    "momentum_range",
    "batch_sizes",
    "width_range",
    "dropout_range",
    "activations",
)


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
    params: dict[str, Any] = {
        "lr": cfg.lr if cfg.stage == 1 else cfg.finetune_lr,
        "l2": cfg.l2,
        "momentum": cfg.momentum,
        "batch_size": cfg.batch_size,
    }
    if cfg.stage == 1:
        for i, (w, d) in enumerate(zip(cfg.head_widths, cfg.head_dropouts, strict=True), 1):
            params[f"width_{i}"], params[f"dropout_{i}"] = w, d
        params["activation"] = cfg.activation
    return params


def apply_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The training config of one trial: ``base`` with the trial's parameters filled in."""
    lr_field = "lr" if base.stage == 1 else "finetune_lr"
    changes: dict[str, Any] = {
        lr_field: params["lr"],
        "l2": params["l2"],
        "momentum": params["momentum"],
        "batch_size": params["batch_size"],
    }
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
    train = TrainConfig(**{n: getattr(cfg, n) for n in names if n not in ("out", "sampler")})
    train.sampler = cfg.batch_sampler  # tune's own ``sampler`` is Optuna's
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
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=self.startup_trials, multivariate=True, constant_liar=True
        )

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
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.prune_warmup
        )
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, cfg.prune_warmup), max_resource=cfg.max_epochs
        )
    return optuna.pruners.NopPruner()
