"""Which films a gallery shows and how they are loaded (``cxrguide explain``).

Cases come from a run's ``predictions_<split>.csv`` by fixed rules, so nobody cherry-picks
(:func:`select_gallery`, :func:`select_compare`); a :class:`Sample` is one film ready for any
run, from the prepared set's caches or from an image file read as ``predict`` reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrguide.core.device import resolve_device
from cxrguide.core.runs import read_info
from cxrguide.data.datasets import Prepared
from cxrguide.data.imaging import letterbox, read_image
from cxrguide.errors import CxrGuideError
from cxrguide.labels import CLASSES
from cxrguide.lungs.segmenter import FilmSegmenter, find_lung_run


def read_predictions(run: Path, split: str) -> pd.DataFrame:
    path = Path(run) / f"predictions_{split}.csv"
    if not path.is_file():
        raise CxrGuideError(
            f"{path}: not found; run 'cxrguide evaluate {run} --split {split}' first"
        )
    frame = pd.read_csv(path, keep_default_na=False)
    missing = {"image_id", "true", "predicted", *(f"p_{c}" for c in CLASSES)} - set(frame)
    if missing:
        raise CxrGuideError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return frame


def select_gallery(predictions: pd.DataFrame, per_group: int = 3) -> pd.DataFrame:
    """Per true class: ``per_group`` most confident correct, mistaken and borderline cases.

    Adds ``group``, ``confidence`` (probability of the predicted class) and ``margin`` (gap
    between the two most probable classes). An image appears once; ties break on image_id.
    """
    probs = predictions[[f"p_{c}" for c in CLASSES]].to_numpy(float)
    top2 = np.sort(probs, axis=1)[:, ::-1][:, :2]
    frame = predictions.assign(confidence=top2[:, 0], margin=top2[:, 0] - top2[:, 1])
    frame = frame.sort_values("image_id", kind="stable")
    chosen = []
    for label in CLASSES:
        part = frame[frame["true"] == label]
        right = part["predicted"] == label
        picks = {
            "correct": part[right].sort_values("confidence", ascending=False, kind="stable"),
            "mistake": part[~right].sort_values("confidence", ascending=False, kind="stable"),
        }
        taken: set[str] = set()
        for group in ("correct", "mistake"):
            rows = picks[group].head(per_group)
            taken |= set(rows["image_id"])
            chosen.append(rows.assign(group=group))
        rest = part[~part["image_id"].isin(taken)]
        rows = rest.sort_values("margin", kind="stable").head(per_group)
        chosen.append(rows.assign(group="borderline"))
    return pd.concat(chosen, ignore_index=True)


def select_compare(predictions: Sequence[pd.DataFrame], per_class: int = 1) -> list[str]:
    """Image ids for the stage comparison: per class, the images the *last* run classifies
    correctly with the highest probability (then its best-scored mistakes), among the images
    every run has predictions for."""
    common = set.intersection(*(set(p["image_id"]) for p in predictions))
    last = predictions[-1][predictions[-1]["image_id"].isin(common)]
    ids = []
    for label in CLASSES:
        part = last[last["true"] == label]
        score = part[f"p_{label}"].to_numpy(float)
        order = np.lexsort((part["image_id"].to_numpy(), -score))
        ids += part["image_id"].to_numpy()[order][:per_class].tolist()
    return ids


@dataclass
class Sample:
    """One film ready for any run: gray (S, S) in [0, 1], its lung mask or None, its label."""

    key: str
    image: np.ndarray
    lung: np.ndarray | None
    true: str | None


def lung_note(prepared: Prepared | None) -> str:
    """The caption's statement about the contour (where it comes from, or why it is absent)."""
    if prepared is not None and prepared.lung_cache_path.exists():
        return f"magenta: lung contour from {prepared.lung_cache_path}"
    where = prepared.lung_cache_path if prepared is not None else "the prepared set"
    return f"no lung contour: no lung masks at {where}"


def prepared_samples(prepared: Prepared, keys: Sequence[str]) -> list[Sample]:
    """Samples for manifest ``image_id`` values, from the image (and lung) cache."""
    index = {k: i for i, k in enumerate(prepared.manifest["image_id"])}
    lungs = prepared.lungs() if prepared.lung_cache_path.exists() else None
    samples = []
    for key in keys:
        if key not in index:
            raise CxrGuideError(f"{prepared.root}/manifest.csv: no image_id {key!r}")
        row = index[key]
        image = np.asarray(prepared.images[row], np.float32) / 255.0
        lung = None if lungs is None else np.asarray(lungs[row]) > 127
        samples.append(Sample(key, image, lung, str(prepared.manifest["label"].iloc[row])))
    return samples


def file_samples(paths: Sequence[Path], run: Path, device: str = "cpu") -> list[Sample]:
    """Samples for image files, read and letterboxed as ``predict`` does (lungs segmented by
    the run's lung model when it names one); their true class is unknown."""
    info = read_info(run)
    segmenter = None
    if info.lung_model:
        segmenter = FilmSegmenter(find_lung_run(info.lung_model, run), resolve_device(device))
    samples = []
    for path in paths:
        gray, image_info = read_image(path)
        square = letterbox(gray, int(info.image_size))
        mask = None if segmenter is None else segmenter.segment(square[None], [image_info])[0][0]
        samples.append(Sample(str(path), square, mask, None))
    return samples


def resolve_images(
    items: Sequence[str], prepared: Prepared | None, run: Path, device: str
) -> list[Sample]:
    """``IMAGES`` arguments: existing files, else ``image_id`` values of the prepared set."""
    files = [Path(i) for i in items if Path(i).is_file()]
    ids = [i for i in items if not Path(i).is_file()]
    if ids and prepared is None:
        raise CxrGuideError(f"{ids[0]}: no such file (and the run records no prepared data)")
    known = set(prepared.manifest["image_id"]) if ids else set()
    for key in ids:
        if key not in known:
            raise CxrGuideError(f"{key}: neither a file nor an image_id of {prepared.root}")
    by_key = {s.key: s for s in prepared_samples(prepared, ids)} if ids else {}
    by_key.update({s.key: s for s in file_samples(files, run, device)} if files else {})
    return [by_key[str(Path(i)) if Path(i).is_file() else i] for i in items]
