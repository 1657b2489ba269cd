"""`cxrguide evaluate RUN`: predictions and metrics for one split of the run's prepared data."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrguide.config import TrainConfig
from cxrguide.core.device import resolve_device
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.attention_metrics import attention_report
from cxrguide.evaluation.baselines import add_baselines, format_baselines
from cxrguide.evaluation.marker import SPLIT, shortcut_section
from cxrguide.evaluation.metrics import classification_report
from cxrguide.evaluation.reliability import ensure_reliability, forward_split
from cxrguide.evaluation.reliability_report import (
    ALL,
    reliability_figure,
    reliability_report,
    split_rows,
)
from cxrguide.files import atomic_open, atomic_write_text
from cxrguide.labels import CLASSES
from cxrguide.models.saved import load_run

_log = logging.getLogger(__name__)


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    dataset: CxrDataset,
    device: torch.device,
    *,
    batch_size: int = 32,
    use_lungs: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(N, 3)`` and manifest rows, in dataset order."""
    probs, rows = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress, leave=False):
        x = batch["image"].to(device)
        lung = batch["lung"].to(device) if use_lungs else None
        logits = model(x, lung) if lung is not None else model(x)
        probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
        rows.append(batch["index"].numpy())
    return np.concatenate(probs), np.concatenate(rows)


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    data: str | Path | None = None,
    *,
    device: str = "auto",
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    attention_images: int = 0,
    out: str | Path | None = None,
    calibration: str | None = None,
    false_flag_rate: float | None = None,
) -> dict[str, Any]:
    """Write ``metrics_<split>.json`` and ``predictions_<split>.csv`` into the run (or ``out``);
    return metrics. ``split="all"`` takes every film of the prepared folder.

    Probabilities are the run's calibrated ones (temperature, when fitted); the metrics carry
    ``calibration`` (ECE / Brier before -> after), ``ood`` (share flagged; on another prepared
    folder also the AUROC against the run's own test films) and ``selective`` (risk-coverage,
    AURC, ``--abstain`` coverage and accuracy), see :mod:`cxrguide.evaluation.reliability`,
    which also fits the run's statistics on first use.

    The metrics include ``attention`` (Grad-CAM energy in the lungs / true lesions, see
    :mod:`cxrguide.evaluation.attention_metrics`) over all images, or over a seeded subset of
    ``attention_images`` (> 0); -1 skips it. On ``test`` (or ``shortcut_test``) of a set with a
    marked ``shortcut_test`` split they also include ``shortcut``: follows_marker and the
    painted-out accuracy (:mod:`cxrguide.evaluation.marker`), because lung energy alone is not
    evidence that a model ignores a shortcut. Under a run that blanks or early-gates on the
    lungs, images with an empty lung mask are skipped and counted (``skipped``).
    """
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, info = load_run(run_dir, dev)
    if not (data or info.data):
        raise CxrGuideError(f"{run_dir}: the run does not record its data; pass --data PREP")
    data = Path(data or info.data)
    prepared = Prepared.open(data)
    rel = ensure_reliability(
        run_dir,
        model,
        info,
        dev,
        batch_size,
        calibration=calibration,
        false_flag_rate=false_flag_rate,
    )
    rows, skipped = split_rows(prepared, split), 0
    if info.strict_lungs:  # an empty mask would blank the film: skip and count, never guess
        present = np.array([bool(np.asarray(prepared.lungs()[r]).any()) for r in rows])
        if not present.any():
            raise CxrGuideError(
                f"{prepared.lung_cache_path}: every {split} image has an empty "
                f"lung mask and {run_dir} needs lungs ({info.mask_inputs})"
            )
        rows, skipped = rows[present], int((~present).sum())
    dataset = CxrDataset(prepared, rows=rows, image_size=info.image_size, with_lungs=info.lung_gate)
    logits, feats, rows = forward_split(
        model, dataset, dev, batch_size=batch_size, use_lungs=info.lung_gate, progress=progress
    )
    extra = dict(
        run=str(run_dir),
        split=split,
        data=str(data),
        backbone=info.backbone,
        stage=info.stage,
        weights_source=info.weights_source,
    )
    y = dataset.labels[rows]
    probs, reliability_extra, columns = reliability_report(
        run_dir, model, info, dev, prepared, y, logits, feats, rel, batch_size=batch_size
    )
    extra.update(reliability_extra)
    if skipped:
        extra["skipped"] = {"empty lung mask": skipped}
    if attention_images >= 0 and split != ALL:
        extra["attention"] = attention_report(
            model,
            prepared,
            split,
            info.image_size,
            dev,
            lung_gate=info.lung_gate,
            batch_size=batch_size,
            max_images=attention_images,
            seed=seed,
            progress=progress,
        )
        lungs = extra["attention"].get("lungs", {})
        if "energy" in lungs:  # headline figures next to accuracy (None: no masks, see "skipped")
            extra["lung_energy"] = lungs["energy"].get("mean")
            extra["lung_pointing_game"] = lungs.get("pointing_game")
        if split in ("test", SPLIT):  # marked phantoms: what decides, beside where the map is
            section = shortcut_section(model, info, prepared, dev)
            if section is not None:
                extra["shortcut"] = section
    target = Path(out) if out is not None else run_dir
    report = write_results(
        target,
        split,
        prepared,
        rows,
        y,
        probs,
        n_boot=n_boot,
        seed=seed,
        extra=extra,
        columns=columns,
    )
    reliability_figure(report["calibration"], target / f"reliability_{split}.png", split)
    return report


def write_results(
    out_dir: Path,
    split: str,
    prepared: Prepared,
    rows: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    extra: dict[str, Any],
    columns: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write ``metrics_<split>.json`` (report + ``extra``) and ``predictions_<split>.csv``.

    Shared by run and ONNX evaluation so both give files of one schema. ``probs`` are
    ``(N, 3)`` in :data:`CLASSES` order for manifest ``rows``. Baselines and warnings come from
    :mod:`cxrguide.evaluation.baselines`.
    """
    manifest = prepared.manifest.iloc[rows]
    sites = manifest["site"].astype(str).to_numpy()
    report = classification_report(y, probs, sites, n_boot=n_boot, seed=seed)
    report.update(extra)
    add_baselines(report, y, probs, sites, prepared.manifest, n_boot=n_boot, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"metrics_{split}.json", json.dumps(report, indent=2))
    table = pd.DataFrame(
        {
            "image_id": manifest["image_id"].to_numpy(),
            "source": manifest["site"].to_numpy(),
            "true": [CLASSES[k] for k in y],
            "predicted": [CLASSES[k] for k in probs.argmax(1)],
        }
    )
    for k, name in enumerate(CLASSES):
        table[f"p_{name}"] = probs[:, k]
    for name, values in (columns or {}).items():  # per-film extras (ood_score, ...)
        table[name] = values
    with atomic_open(out_dir / f"predictions_{split}.csv", "w", newline="") as fh:
        table.to_csv(fh, index=False)
    return report


def score_split(run_dir: Path, split: str, cfg: TrainConfig) -> dict[str, Any]:
    """The :data:`~cxrguide.training.stage_run.Scorer` every training caller hands in: a finished
    run's metrics on ``split`` of its data (200 bootstrap resamples, quiet)."""
    metrics = evaluate_run(
        run_dir,
        split,
        cfg.data,
        device=cfg.device,
        n_boot=200,
        progress=False,
        calibration=cfg.calibration,
        false_flag_rate=cfg.false_flag_rate,
    )
    if split == "test":  # what the model must beat, and any collapse, next to its accuracy
        _log.info("\n".join(f"  {run_dir.name} test {line}" for line in format_baselines(metrics)))
    return metrics
