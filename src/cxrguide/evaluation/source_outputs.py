"""One run's outputs for the cross-source study: probabilities and penultimate features.

The study measures several things per run (accuracy per source, ECE, a source probe, a
Mahalanobis OOD score), all from the same two arrays per film: the softmax probabilities and
the input of the head's last layer (the penultimate features). They are computed once per run,
saved beside it (``sources_outputs.npz``, written atomically: its presence marks a scored run,
so a killed study resumes without recomputing) and read back for every measure.

A Stage I run's body is frozen, so its outputs come from the cached pooled features (the head
alone runs); other runs run the whole network, with lung masks where the run uses them (films
with an empty mask are left out under a run that blanks or early-gates on the lungs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.evaluation.evaluate import predict_split
from cxrguide.files import atomic_save
from cxrguide.labels import CLASS_INDEX
from cxrguide.models.saved import load_run

OUTPUTS = "sources_outputs.npz"


@dataclass
class RunOutputs:
    """Per scored film (manifest ``rows``): ``probs`` (N, 3) and ``features`` (N, D)."""

    rows: np.ndarray
    probs: np.ndarray
    features: np.ndarray

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The manifest rows among ``rows`` that were scored, with their probs and features."""
        keep = np.isin(self.rows, rows)
        return self.rows[keep], self.probs[keep], self.features[keep]

    def save(self, run: Path) -> None:
        arrays = {"rows": self.rows, "probs": self.probs, "features": self.features}
        atomic_save(lambda fh: np.savez(fh, **arrays), Path(run) / OUTPUTS)

    @classmethod
    def load(cls, run: Path) -> RunOutputs:
        with np.load(Path(run) / OUTPUTS, allow_pickle=False) as z:
            return cls(z["rows"], z["probs"], z["features"])


def labels_of(prepared: Prepared) -> np.ndarray:
    """Class index of every manifest row."""
    return prepared.manifest["label"].map(CLASS_INDEX).to_numpy()


@torch.no_grad()
def compute_outputs(
    run: Path,
    prepared: Prepared,
    rows: np.ndarray,
    device: torch.device,
    features: np.ndarray | None = None,
    batch_size: int = 64,
) -> RunOutputs:
    """Probabilities and penultimate features of ``run`` on manifest ``rows``.

    ``features``: the frozen body's cached pooled features (one row per manifest row); used for
    a Stage I run, whose body they came from.
    """
    model, info = load_run(run, device)
    captured: list[np.ndarray] = []
    hook = model.head.fc.register_forward_hook(
        lambda _m, args, _out: captured.append(args[0].detach().float().cpu().numpy())
    )
    try:
        if info.stage == 1 and features is not None:
            probs = []
            for start in range(0, len(rows), batch_size):
                x = torch.from_numpy(np.asarray(features[rows[start : start + batch_size]]))
                probs.append(torch.softmax(model.head(x.to(device)).float(), 1).cpu().numpy())
            prob = np.concatenate(probs) if probs else np.zeros((0, 3), np.float32)
        else:
            if info.strict_lungs:  # an empty mask would blank the film: leave it out
                lungs = prepared.lungs()
                rows = rows[[bool(np.asarray(lungs[r]).any()) for r in rows]]
            dataset = CxrDataset(
                prepared, rows=rows, image_size=info.image_size, with_lungs=info.lung_gate
            )
            prob, rows = predict_split(
                model,
                dataset,
                device,
                batch_size=batch_size,
                use_lungs=info.lung_gate,
                progress=False,
            )
    finally:
        hook.remove()
    feats = np.concatenate(captured) if captured else np.zeros((0, model.head.fc.in_features))
    return RunOutputs(
        np.asarray(rows, dtype=np.int64), prob.astype(np.float32), feats.astype(np.float32)
    )


def split_metrics(outputs: RunOutputs, labels: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """accuracy, macro F1 and macro one-vs-rest AUC (NaN where undefined) on ``rows``."""
    scored, probs, _ = outputs.take(rows)
    y = labels[scored]
    if len(y) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "macro_auc": float("nan")}
    pred = probs.argmax(1)
    try:
        auc = float(roc_auc_score(y, probs, multi_class="ovr", labels=[0, 1, 2]))
    except ValueError:  # a class missing from these films
        auc = float("nan")
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=np.unique(y))),
        "macro_auc": auc,
        "n": int(len(y)),
    }
