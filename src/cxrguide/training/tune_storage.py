"""Where a study lives (any SQLAlchemy URL) and what happens to trials whose worker died."""

from __future__ import annotations

import os
import socket
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cxrguide.errors import CxrGuideError

HOST = socket.gethostname()
STUDY_DB = "study.db"


def default_out(study_name: str) -> Path:
    """A study's folder when no ``--out`` is given: ``runs/tune-<study>``."""
    return Path("runs") / f"tune-{study_name}"


def default_url(out: Path) -> str:
    """The study's database when no ``--storage`` is given: SQLite ``OUT/study.db``."""
    return f"sqlite:///{(out / STUDY_DB).resolve()}"


def safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<storage URL>"


def make_storage(url: str, heartbeat: int = 0, retries: int = 0) -> optuna.storages.RDBStorage:
    """An RDB storage; with ``heartbeat``, a trial silent for twice that is failed and retried."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}  # wait for other local writers
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=partial(retry_trial, retries=retries),
        )
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


# ---- dead workers and retries ---------------------------------------------------------------


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
            storage.set_trial_user_attr(
                t._trial_id, "error", f"worker {HOST}:{pid} ended during the trial"
            )
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
    return sum(
        t.state in counted or (t.state == TrialState.FAIL and t.number not in retried)
        for t in trials
    )
