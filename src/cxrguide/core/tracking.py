"""A training run's per-epoch scalars in the field's viewers: TensorBoard and, optionally, MLflow.

The engine (every stage, the U-Net, pretraining) hands each epoch's ``history.csv`` row to a
:class:`Tracker`; ``history.csv`` stays the record, these mirror it. TensorBoard event files go
into the run folder itself (``tensorboard --logdir RUNS`` shows one curve per run). With an MLflow
tracking URI the same scalars, the run's config as params, and (at :func:`finish_mlflow`) the run
folder's files go to an MLflow run, continued when a killed run resumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cxrguide.config import load_yaml
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.files import atomic_write_text

_log = logging.getLogger(__name__)

EXPERIMENT = "cxrguide"
MLFLOW_RECORD = "mlflow_run.json"  # {"uri", "run_id"}: a resumed run continues its MLflow run
SPLITS = ("train", "val")


def scalar_name(column: str) -> str:
    """``train_loss`` -> ``loss/train``: a metric's train and val curves share one chart."""
    for split in SPLITS:
        if column.startswith(f"{split}_"):
            return f"{column[len(split) + 1 :]}/{split}"
    return column


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """A history row's numbers under their tracking names (``epoch`` is the step, not a scalar)."""
    return {scalar_name(k): float(v) for k, v in row.items() if k != "epoch"}


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``a.b: str(value)`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def _summary_writer(run_dir: Path, start_epoch: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the `tracking` extra is not installed: history.csv still has it all
        _log.warning("%s: no TensorBoard events (pip install 'cxrguide[tracking]')", run_dir)
        return None
    # a resume hides what a killed process logged past its last checkpoint (TensorBoard's purge)
    return SummaryWriter(log_dir=str(run_dir), purge_step=start_epoch + 1 if start_epoch else None)


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(
            "mlflow: --mlflow needs the mlflow extra (pip install 'cxrguide[mlflow]')"
        ) from None
    return MlflowClient(tracking_uri=uri)


def _chunks(items: list, size: int = 100) -> Iterable[list]:  # MLflow's batch limit
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MlflowRun:
    """One MLflow run per run folder; its id is kept in ``MLFLOW_RECORD`` for a resume."""

    def __init__(self, uri: str, run_dir: Path, params: Mapping[str, Any]) -> None:
        record = run_dir / MLFLOW_RECORD
        saved = json.loads(record.read_text()) if record.is_file() else {}
        try:
            self.client = _client(uri)
            from mlflow.entities import Param

            if saved.get("uri") == uri:  # a resumed run: same MLflow run, params already there
                self.run_id = str(saved["run_id"])
                self.client.update_run(self.run_id, status="RUNNING")
                return
            exp = self.client.get_experiment_by_name(EXPERIMENT)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(EXPERIMENT)
            run = self.client.create_run(
                exp_id, run_name=run_dir.name, tags={"run_dir": str(run_dir.resolve())}
            )
            self.run_id = run.info.run_id
            flat = [Param(k, v[:6000]) for k, v in sorted(flatten(params).items())]
            for chunk in _chunks(flat):
                self.client.log_batch(self.run_id, params=chunk)
        except CxrGuideError:
            raise
        except Exception as err:  # a bad store URI, a server gone: one line, at the start
            msg = " ".join(str(err).split())[:300]
            raise CxrGuideError(f"mlflow: {uri}: {type(err).__name__}: {msg}") from None
        atomic_write_text(record, json.dumps({"uri": uri, "run_id": self.run_id}))

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars.items()]
        for chunk in _chunks(metrics):
            self.client.log_batch(self.run_id, metrics=chunk)


class Tracker:
    """What a training loop calls once per epoch, before its checkpoint: ``log(row)``; then
    ``close()``. ``start_epoch``: epochs already done (a resume)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        start_epoch: int = 0,
        mlflow: str | None = None,
        params: Mapping | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._ml = MlflowRun(mlflow, self.run_dir, params or {}) if mlflow else None  # fails first
        self._tb = _summary_writer(self.run_dir, start_epoch)

    def log(self, row: Mapping[str, Any]) -> None:
        """One epoch's history row (``epoch`` is the step)."""
        step, scalars = int(row["epoch"]), epoch_scalars(row)
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, step)
            self._tb.flush()
        if self._ml is not None:
            try:
                self._ml.log(scalars, step)
            except Exception as err:  # a server gone mid-run must not end hours of training
                _log.warning("mlflow: epoch %d not logged (%s); history.csv has it", step, err)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def run_params(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` (written when it starts) as MLflow params; {} when absent."""
    path = run_dir / "config.yaml"
    return load_yaml(path) if path.is_file() else {}


def finish_mlflow(run_dir: str | Path, uri: str | None, extra: Iterable[Path] = ()) -> None:
    """Upload the finished run folder's files (and ``extra`` files) to its MLflow run and mark
    it finished (no-op without ``uri``)."""
    run_dir = Path(run_dir)
    record = run_dir / MLFLOW_RECORD
    if not uri or not record.is_file():
        return
    saved = json.loads(record.read_text())
    if saved.get("uri") != uri:
        return
    client = _client(saved["uri"])
    try:
        client.log_artifacts(saved["run_id"], str(run_dir))
        for path in extra:
            client.log_artifact(saved["run_id"], str(path))
        client.set_terminated(saved["run_id"], "FINISHED")
    except Exception as err:
        _log.warning("mlflow: %s: artefacts not logged (%s)", run_dir, err)
