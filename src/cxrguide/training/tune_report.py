"""What ``cxrguide tune --show`` / ``--export`` read from a study: the trials table, the best
trial as a ``train`` config, and the optimisation-history and parameter-importance plots
(:func:`summarize` writes them all). Re-exported by :mod:`cxrguide.training.tune`."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from cxrguide.config import TrainConfig, from_dict, save_yaml
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_open
from cxrguide.training.tune_space import apply_params
from cxrguide.training.tune_storage import (
    STUDY_DB,
    default_out,
    default_url,
    make_storage,
    safe_url,
)


def load(study_name: str, storage: str | None, out: Path | None) -> tuple[optuna.Study, Path]:
    """An existing study (``--show``); the default storage is OUT/study.db."""
    out = Path(out) if out else default_out(study_name)
    if storage is None and not (out / STUDY_DB).exists():
        raise CxrGuideError(f"{out / STUDY_DB}: no study database (give --storage URL or --out)")
    url = storage or default_url(out)
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
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "epochs": len(t.intermediate_values),
                **t.params,
                "duration_s": t.duration.total_seconds() if t.duration else math.nan,
                "retry_of": a.get("retry_of"),
                "worker": f"{a.get('host', '')}:{a.get('pid', '')}",
                "run": a.get("run", ""),
                "error": error,
            }
        )
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
        ax.step(
            xs,
            np.maximum.accumulate([t.value for t in done]),
            where="post",
            color="C3",
            label="best so far",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel="val accuracy", title=f"optimisation history: {study.study_name}")
    ax.legend(loc="lower right")
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, dpi=120, format="png")
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
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, dpi=120, format="png")
    return path


def summarize(study: optuna.Study, out: Path) -> dict[str, Path]:
    """Write trials.csv, best.yaml and the two plots into ``out``; return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"trials": out / "trials.csv"}
    with atomic_open(files["trials"], "w", newline="") as fh:
        trials_frame(study).to_csv(fh, index=False)
    files["history_plot"] = plot_history(study, out / "optimization_history.png")
    importance = plot_importance(study, out / "param_importances.png")
    if importance is not None:
        files["importance_plot"] = importance
    if best_trial(study) is not None and "base" in study.user_attrs:
        files["best"] = export_best(study, out / "best.yaml")
    return files
