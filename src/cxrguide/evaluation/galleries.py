"""Grad-CAM galleries of a run and the stage comparison figure (``cxrguide explain``).

The pictures a reader checks the study's claim with: does the classifier look at the lungs?
Cases are chosen from the run's ``predictions_<split>.csv`` so that nobody cherry-picks: per
true class the most confident correct cases, the most confident mistakes and the borderline
cases (smallest gap between the two most probable classes). The heatmap is always the one of
the *predicted* class (what the model used), drawn by :mod:`cxrguide.attention.cam`; the
lung contour (magenta) comes from the prepared set's lung cache when it has one, and each
caption says when it does not. Every figure is listed in ``DIR/explain.json`` with the images,
labels and probabilities it shows, so a report can embed it without guessing.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrguide.attention.cam import _Gated, cam_map, draw_contour, heat_overlay, library_class
from cxrguide.config.inference import CAM_METHODS, SLOW_CAM_METHODS
from cxrguide.core.device import resolve_device
from cxrguide.core.runs import RunInfo, read_info
from cxrguide.data.datasets import Prepared
from cxrguide.data.imaging import letterbox, read_image
from cxrguide.data.transforms import resize_image, resize_mask
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.report_figures import render_grid
from cxrguide.files import atomic_write_json
from cxrguide.labels import CLASSES
from cxrguide.lungs.segmenter import FilmSegmenter, find_lung_run
from cxrguide.models.saved import load_run

METHOD_NAMES = {**CAM_METHODS, **SLOW_CAM_METHODS}
METHODS = tuple(METHOD_NAMES)
GROUPS = {"correct": "most confident correct", "mistake": "most confident mistakes",
          "borderline": "borderline (smallest top-2 margin)"}  # fmt: skip
INDEX = "explain.json"
STAGE_NAMES = {1: "Stage I", 2: "Stage II", 3: "Stage III"}


def method_map(
    model: torch.nn.Module,
    image: np.ndarray,
    target: int,
    lung: np.ndarray | None = None,
    method: str = "gradcam",
    *,
    gate: bool = False,
) -> np.ndarray:
    """:func:`cam_map` for every method of :data:`METHODS`, Score-CAM included.

    Score-CAM needs no gradients but one forward pass per feature channel (1280 for MobileNet
    V2), so it is opt-in and slow; ``explain.cam_map`` leaves it out for that reason.
    """
    if method != "scorecam":
        return cam_map(model, image, target, lung, method, gate=gate)
    score_cam = library_class(method)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(image, np.float32))[None, None].to(device)
    net: torch.nn.Module = model
    if gate:
        if lung is None:
            raise ValueError("gate=True needs the lung mask")
        net = _Gated(model, torch.as_tensor(np.asarray(lung, np.float32))[None, None].to(device))
    # the library prints a tqdm bar per image on stderr: keep the command's output readable
    with contextlib.redirect_stderr(io.StringIO()), score_cam(net, [model.feature_tap]) as cam:
        cam.batch_size = 64
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(target))])[0]
    return np.nan_to_num(np.asarray(heat, np.float32)).clip(0.0, 1.0)


# --- choosing the cases ---------------------------------------------------------------------
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


# --- images ---------------------------------------------------------------------------------
@dataclass
class Sample:
    """One film ready for any run: gray (S, S) in [0, 1], its lung mask or None, its label."""

    key: str
    image: np.ndarray
    lung: np.ndarray | None
    true: str | None


@dataclass
class Panel:
    sample: Sample
    predicted: str
    probability: float
    probs: dict[str, float]
    overlay: np.ndarray  # RGB uint8 at the run's input size

    def record(self) -> dict[str, Any]:
        return {"image": self.sample.key, "true": self.sample.true, "predicted": self.predicted,
                "probability": round(self.probability, 4),
                "probabilities": {k: round(v, 4) for k, v in self.probs.items()}}  # fmt: skip


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


class RunExplainer:
    """A loaded run that turns samples into panels (prediction + heatmap + contour)."""

    def __init__(self, run: str | Path, method: str = "gradcam", device: str = "cpu") -> None:
        if method not in METHODS:
            raise CxrGuideError(f"method: {method!r} unknown; choose one of {', '.join(METHODS)}")
        self.run = Path(run)
        self.model, self.info = load_run(self.run, resolve_device(device))
        self.method = method

    @property
    def label(self) -> str:
        stage = STAGE_NAMES.get(self.info.stage, f"Stage {self.info.stage}")
        return f"{stage} {self.info.backbone}"

    def panel(self, sample: Sample) -> Panel:
        size = self.info.image_size
        image = resize_image(torch.from_numpy(sample.image), size).numpy()
        lung = None
        if sample.lung is not None:
            lung = resize_mask(torch.from_numpy(sample.lung.astype(bool)), size).numpy()
        if self.info.lung_gate and lung is None:
            raise CxrGuideError(
                f"{self.run}: the run gates on lung masks but {sample.key} has none "
                "(run 'cxrguide lungs predict' for the prepared set)"
            )
        device = next(self.model.parameters()).device
        x = torch.from_numpy(image)[None, None].to(device)
        gate = torch.from_numpy(lung.astype(np.float32))[None, None].to(device) if (
            self.info.lung_gate) else None  # fmt: skip
        with torch.no_grad():
            logits = self.model(x) if gate is None else self.model(x, gate)
        p = torch.softmax(logits.float(), 1)[0].cpu().numpy()
        k = int(p.argmax())
        heat = method_map(self.model, image, k, lung, self.method, gate=self.info.lung_gate)
        rgb = heat_overlay(image, heat)
        if lung is not None:
            rgb = draw_contour(rgb, lung, width=max(1, size // 160))
        return Panel(sample, CLASSES[k], float(p[k]),
                     {c: float(v) for c, v in zip(CLASSES, p, strict=True)}, rgb)  # fmt: skip


# --- figures ----------------------------------------------------------------------------------
def gray_with_contour(sample: Sample) -> np.ndarray:
    rgb = np.repeat((np.clip(sample.image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if sample.lung is None:
        return rgb
    return draw_contour(rgb, sample.lung, width=max(1, sample.image.shape[0] // 160))


def _cells(panels: Sequence[Panel | np.ndarray | None], keys: bool = False) -> list[Any]:
    """Panels -> :func:`render_grid` cells: (overlay, "pred X p", green right / red wrong /
    black when the truth is unknown), the image name on top when ``keys``."""
    out: list[Any] = []
    for p in panels:
        if not isinstance(p, Panel):
            out.append(p)
            continue
        truth = p.sample.true
        color = "black" if truth is None else ("#1a7f37" if truth == p.predicted else "#c62828")
        text = f"{source_of(p.sample.key)}pred {p.predicted} {p.probability:.2f}"
        out.append((p.overlay, f"{short_name(p.sample.key, 22)}\n{text}" if keys else text, color))
    return out


def source_of(key: str) -> str:
    """``"source | "`` of a manifest image id (``source:path``), so every film shows where it
    came from (a shortcut shows up as a source/class pattern); "" for a plain file."""
    return f"{key.split(':', 1)[0]} | " if ":" in key and not Path(key).exists() else ""


def short_name(key: str, width: int = 26) -> str:
    name = key.split(":", 1)[-1].rsplit("/", 1)[-1]
    return name if len(name) <= width else "…" + name[-width + 1 :]


def update_index(out: Path, figures: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge ``figures`` into ``out/explain.json`` (same file name: replaced)."""
    path = out / INDEX
    index = json.loads(path.read_text()) if path.is_file() else {"figures": []}
    names = {f["file"] for f in figures}
    index["figures"] = [f for f in index.get("figures", []) if f["file"] not in names] + figures
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, index)
    return index


def _prepared_of(info: RunInfo, data: str | Path | None) -> Prepared | None:
    root = data or info.data
    return Prepared.open(root) if str(root or "") else None


def explain_run(
    run: str | Path,
    out: str | Path,
    images: Sequence[str] = (),
    *,
    split: str = "test",
    method: str = "gradcam",
    per_group: int = 3,
    data: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Galleries (one PNG per true class; rows: correct, mistakes, borderline) or, with
    ``images`` (files or image ids), one grid of those; returns the updated index."""
    run, out = Path(run), Path(out)
    explainer = RunExplainer(run, method, device)
    prepared = _prepared_of(explainer.info, data)
    how = f"{METHOD_NAMES[method]} of the predicted class; {lung_note(prepared)}"
    meta = {"kind": "gallery", "run": str(run), "backbone": explainer.info.backbone,
            "stage": explainer.info.stage, "method": method, "split": split}  # fmt: skip
    figures = []
    if images:
        panels = [explainer.panel(s) for s in resolve_images(images, prepared, run, device)]
        ncols = min(4, len(panels))
        grid = [_cells(panels[i : i + ncols], keys=True) for i in range(0, len(panels), ncols)]
        name = "images.png"
        if any(p.sample.lung is None for p in panels) and "magenta" in how:
            how += " (images without a contour have no lung mask)"
        render_grid(grid, out / name, title=f"{explainer.label}: chosen images", caption=how,
                    row_labels=[""] * len(grid))  # fmt: skip
        figures.append({**meta, "kind": "images", "file": name, "title": f"{explainer.label}: "
                        "chosen images", "caption": how,
                        "items": [p.record() for p in panels]})  # fmt: skip
        return update_index(out, figures)
    if prepared is None:
        raise CxrGuideError(f"{run}: the run records no prepared data; pass --data PREP")
    chosen = select_gallery(read_predictions(run, split), per_group)
    samples = {s.key: s for s in prepared_samples(prepared, chosen["image_id"].tolist())}
    for label in CLASSES:
        part = chosen[chosen["true"] == label]
        if part.empty:
            continue
        grid, items = [], []
        for group in GROUPS:
            rows = part[part["group"] == group]
            panels = [explainer.panel(samples[k]) for k in rows["image_id"]]
            grid.append(_cells(panels) or [None])
            items += [{**p.record(), "group": group} for p in panels]
        name = f"gallery_{label.lower()}.png"
        title = f"{explainer.label}, {split} split: true class {label}"
        caption = f"Rows: {'; '.join(GROUPS.values())}. {how}"
        render_grid(grid, out / name, title=title, caption=caption,
                    row_labels=list(GROUPS.values()))  # fmt: skip
        figures.append({**meta, "file": name, "title": title, "caption": caption,
                        "class": label, "items": items})  # fmt: skip
    return update_index(out, figures)


def compare_runs(
    runs: Sequence[str | Path],
    out: str | Path,
    images: Sequence[str] = (),
    *,
    split: str = "test",
    method: str = "gradcam",
    per_class: int = 1,
    data: str | Path | None = None,
    device: str = "cpu",
    name: str = "compare.png",
) -> dict[str, Any]:
    """The study's figure: the same films (rows) under each run (columns, e.g. Stage I, II,
    III), beside the plain film with its lung contour. Images come from the first run's
    prepared set (``images`` as files or ids, else :func:`select_compare`)."""
    if len(runs) < 2:
        raise CxrGuideError("--compare: give at least two runs (e.g. Stage I, II and III)")
    runs = [Path(r) for r in runs]
    infos = [read_info(r) for r in runs]
    explainers = [RunExplainer(r, method, device) for r in runs]
    prepared = _prepared_of(infos[0], data)
    if images:
        lung_run = next((r for r, i in zip(runs, infos, strict=True) if i.lung_model), runs[0])
        samples = resolve_images(images, prepared, lung_run, device)
    else:
        if prepared is None:
            raise CxrGuideError(f"{runs[0]}: the run records no prepared data; pass --data PREP")
        ids = select_compare([read_predictions(r, split) for r in runs], per_class)
        samples = prepared_samples(prepared, ids)
    grid, items = [], []
    for sample in samples:
        panels = [e.panel(sample) for e in explainers]
        grid.append([gray_with_contour(sample), *_cells(panels)])
        items.append({"image": sample.key, "true": sample.true,
                      "runs": [{"run": str(e.run), **p.record()}
                               for e, p in zip(explainers, panels, strict=True)]})  # fmt: skip
    labels = [f"true {s.true or '?'}\n{source_of(s.key)}{short_name(s.key, 18)}" for s in samples]
    cols = ["image", *(e.label for e in explainers)]
    title = "The same films across runs: " + " vs ".join(e.label for e in explainers)
    caption = f"{METHOD_NAMES[method]} of each run's predicted class; {lung_note(prepared)}"
    render_grid(grid, Path(out) / name, title=title, caption=caption, row_labels=labels,
                col_labels=cols)  # fmt: skip
    figure = {"kind": "compare", "file": name, "title": title, "caption": caption,
              "method": method, "split": split, "runs": [str(r) for r in runs],
              "items": items}  # fmt: skip
    return update_index(Path(out), [figure])
