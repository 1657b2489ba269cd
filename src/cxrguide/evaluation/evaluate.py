"""`cxrguide evaluate RUN`: predictions and metrics for one split of the run's prepared data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.metrics import classification_report
from cxrguide.labels import CLASSES
from cxrguide.training.engine import resolve_device
from cxrguide.training.runs import load_run


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
) -> dict[str, Any]:
    """Write ``metrics_<split>.json`` and ``predictions_<split>.csv`` into the run; return metrics."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, info = load_run(run_dir, dev)
    data = Path(data or info.data)
    if not str(data):
        raise CxrGuideError(f"{run_dir}: the run does not record its data; pass --data PREP")
    prepared = Prepared.open(data)
    dataset = CxrDataset(prepared, split, image_size=info.image_size, with_lungs=info.lung_gate)
    probs, rows = predict_split(model, dataset, dev, batch_size=batch_size,
                                use_lungs=info.lung_gate, progress=progress)  # fmt: skip
    manifest = prepared.manifest.iloc[rows]
    y = dataset.labels[rows]
    report = classification_report(y, probs, manifest["site"].to_numpy(), n_boot=n_boot, seed=seed)
    report.update(run=str(run_dir), split=split, data=str(data), backbone=info.backbone,
                  stage=info.stage, weights_source=info.weights_source)  # fmt: skip
    (run_dir / f"metrics_{split}.json").write_text(json.dumps(report, indent=2))
    table = pd.DataFrame({"image_id": manifest["image_id"].to_numpy(),
                          "source": manifest["site"].to_numpy(),
                          "true": [CLASSES[k] for k in y],
                          "predicted": [CLASSES[k] for k in probs.argmax(1)]})  # fmt: skip
    for k, name in enumerate(CLASSES):
        table[f"p_{name}"] = probs[:, k]
    table.to_csv(run_dir / f"predictions_{split}.csv", index=False)
    return report
