"""Contact sheet: a grid of example films per class with their ground truth drawn on top.

Rows are the three classes plus one row of ``shortcut_test`` films; each tile shows the film with
the right lung outlined in cyan, the left lung in green, the lesion in red and the marker box in
yellow (solid when the marker sits at its class's reserved position). The films are the first
ones of the plan for the same config, i.e. the very films ``--out`` writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from cxrguide.config import SynthConfig
from cxrguide.data.synthetic.generate import SHORTCUT_TEST, plan_dataset
from cxrguide.data.synthetic.render import Case, render_case
from cxrguide.errors import CxrGuideError
from cxrguide.labels import CLASSES

COLOURS = {
    "right": (0, 220, 255),
    "left": (60, 255, 60),
    "lesion": (255, 40, 40),
    "marker": (255, 220, 0),
}


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _resize_mask(mask: np.ndarray, tile: int) -> np.ndarray:
    if mask.shape[0] == tile:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (tile, tile), Image.Resampling.NEAREST
    )
    return np.asarray(img) > 0


def draw_tile(case: Case, tile: int, overlay: bool = True) -> Image.Image:
    """One film as an RGB tile with mask contours, lesion contour and marker box."""
    gray = Image.fromarray(case.image)
    if gray.size[0] != tile:
        gray = gray.resize((tile, tile), Image.Resampling.LANCZOS)
    rgb = np.repeat(np.asarray(gray)[:, :, None], 3, axis=2).copy()
    if overlay:
        layers = [
            (case.lung_mask == 128, "right"),
            (case.lung_mask == 255, "left"),
            (case.lesion, "lesion"),
        ]
        for mask, name in layers:
            rgb[_outline(_resize_mask(mask, tile))] = COLOURS[name]
    img = Image.fromarray(rgb)
    if overlay:
        f = tile / case.image.shape[0]
        x0, y0, x1, y1 = (v * f for v in case.marker.box)
        width = 2 if case.marker.target_class else 1
        ImageDraw.Draw(img).rectangle(
            (x0 - 1, y0 - 1, x1, y1), outline=COLOURS["marker"], width=width
        )
    return img


def _caption(case: Case) -> str:
    s = case.spec
    sev = f" sev {case.severity:.2f}" if case.severity > 0 else ""
    first = f"{s.label} " if s.split_hint else ""
    where = s.marker_position + ("*" if s.marker_target_class else "")
    return f"{first}{s.view} style {s.style}{sev}\n{s.marker_kind} {where}"


def draw_preview(
    cfg: SynthConfig, path: str | Path, per_class: int = 6, overlay: bool = True
) -> Path:
    """Write the contact sheet PNG for ``cfg`` to ``path``; returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise CxrGuideError(f"{path}: preview must be a .png file")
    specs = plan_dataset(cfg)
    rows: list[tuple[str, list]] = []
    for label in CLASSES:
        picked = [s for s in specs if s.label == label and not s.split_hint][:per_class]
        rows.append((label, picked))
    shortcut = [s for s in specs if s.split_hint == SHORTCUT_TEST][:per_class]
    if shortcut:
        rows.append((SHORTCUT_TEST, shortcut))
    tile = min(cfg.size, 256)
    head, cap = 110, 30
    sheet = Image.new(
        "RGB", (head + per_class * (tile + 4), len(rows) * (tile + cap + 4) + 24), "white"
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    legend = (
        "cyan: right lung  green: left lung  red: lesion  yellow: marker "
        "(* / thick: class position)"
    )
    draw.text((6, 5), legend, fill="black", font=font)
    for r, (title, picked) in enumerate(rows):
        top = 24 + r * (tile + cap + 4)
        draw.text((6, top + tile // 2 - 8), title, fill="black", font=font)
        for c, spec in enumerate(picked):
            case = render_case(spec, cfg.size)
            x = head + c * (tile + 4)
            sheet.paste(draw_tile(case, tile, overlay), (x, top))
            draw.multiline_text(
                (x, top + tile + 1), _caption(case), fill="black", font=font, spacing=1
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
