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
import torch

from cxrguide.attention.cam import _Gated, cam_map, draw_contour, heat_overlay, library_class
from cxrguide.config.inference import EXPLAIN_CAM_METHODS
from cxrguide.core.device import resolve_device
from cxrguide.core.runs import RunInfo, read_info
from cxrguide.data.datasets import Prepared
from cxrguide.data.transforms import resize_image, resize_mask
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.gallery_cases import (  # noqa: F401  (re-exported: the module's API)
    Sample,
    file_samples,
    lung_note,
    prepared_samples,
    read_predictions,
    resolve_images,
    select_compare,
    select_gallery,
)
from cxrguide.evaluation.report_figures import render_grid
from cxrguide.files import atomic_write_json
from cxrguide.labels import CLASSES
from cxrguide.models.saved import load_run

GROUPS = {
    "correct": "most confident correct",
    "mistake": "most confident mistakes",
    "borderline": "borderline (smallest top-2 margin)",
}
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
    """:func:`cam_map` for every method of :data:`EXPLAIN_CAM_METHODS`, Score-CAM included.

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
# --- panels ---------------------------------------------------------------------------------
@dataclass
class Panel:
    sample: Sample
    predicted: str
    probability: float
    probs: dict[str, float]
    overlay: np.ndarray  # RGB uint8 at the run's input size

    def record(self) -> dict[str, Any]:
        return {
            "image": self.sample.key,
            "true": self.sample.true,
            "predicted": self.predicted,
            "probability": round(self.probability, 4),
            "probabilities": {k: round(v, 4) for k, v in self.probs.items()},
        }


class RunExplainer:
    """A loaded run that turns samples into panels (prediction + heatmap + contour)."""

    def __init__(self, run: str | Path, method: str = "gradcam", device: str = "cpu") -> None:
        if method not in EXPLAIN_CAM_METHODS:
            raise CxrGuideError(
                f"method: {method!r} unknown; choose one of {', '.join(EXPLAIN_CAM_METHODS)}"
            )
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
        gate = (
            torch.from_numpy(lung.astype(np.float32))[None, None].to(device)
            if (self.info.lung_gate)
            else None
        )
        with torch.no_grad():
            logits = self.model(x) if gate is None else self.model(x, gate)
        p = torch.softmax(logits.float(), 1)[0].cpu().numpy()
        k = int(p.argmax())
        heat = method_map(self.model, image, k, lung, self.method, gate=self.info.lung_gate)
        rgb = heat_overlay(image, heat)
        if lung is not None:
            rgb = draw_contour(rgb, lung, width=max(1, size // 160))
        return Panel(
            sample,
            CLASSES[k],
            float(p[k]),
            {c: float(v) for c, v in zip(CLASSES, p, strict=True)},
            rgb,
        )


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
    how = f"{EXPLAIN_CAM_METHODS[method]} of the predicted class; {lung_note(prepared)}"
    meta = {
        "kind": "gallery",
        "run": str(run),
        "backbone": explainer.info.backbone,
        "stage": explainer.info.stage,
        "method": method,
        "split": split,
    }
    figures = []
    if images:
        panels = [explainer.panel(s) for s in resolve_images(images, prepared, run, device)]
        ncols = min(4, len(panels))
        grid = [_cells(panels[i : i + ncols], keys=True) for i in range(0, len(panels), ncols)]
        name = "images.png"
        if any(p.sample.lung is None for p in panels) and "magenta" in how:
            how += " (images without a contour have no lung mask)"
        render_grid(
            grid,
            out / name,
            title=f"{explainer.label}: chosen images",
            caption=how,
            row_labels=[""] * len(grid),
        )
        figures.append(
            {
                **meta,
                "kind": "images",
                "file": name,
                "title": f"{explainer.label}: chosen images",
                "caption": how,
                "items": [p.record() for p in panels],
            }
        )
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
        render_grid(
            grid, out / name, title=title, caption=caption, row_labels=list(GROUPS.values())
        )
        figures.append(
            {
                **meta,
                "file": name,
                "title": title,
                "caption": caption,
                "class": label,
                "items": items,
            }
        )
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
        items.append(
            {
                "image": sample.key,
                "true": sample.true,
                "runs": [
                    {"run": str(e.run), **p.record()}
                    for e, p in zip(explainers, panels, strict=True)
                ],
            }
        )
    labels = [f"true {s.true or '?'}\n{source_of(s.key)}{short_name(s.key, 18)}" for s in samples]
    cols = ["image", *(e.label for e in explainers)]
    title = "The same films across runs: " + " vs ".join(e.label for e in explainers)
    caption = f"{EXPLAIN_CAM_METHODS[method]} of each run's predicted class; {lung_note(prepared)}"
    render_grid(
        grid, Path(out) / name, title=title, caption=caption, row_labels=labels, col_labels=cols
    )
    figure = {
        "kind": "compare",
        "file": name,
        "title": title,
        "caption": caption,
        "method": method,
        "split": split,
        "runs": [str(r) for r in runs],
        "items": items,
    }
    return update_index(Path(out), [figure])
