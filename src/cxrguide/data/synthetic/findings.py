"""Findings drawn strictly inside the lung fields: lobar consolidation and ground-glass opacities.

A finding is an *opacity* map in [0, 1]: the share of the local lung air replaced by fluid or
cells (1 = the lung there is as dense as soft tissue). It is multiplied by the exact lung mask,
so nothing leaks outside the lungs, and the lesion mask is where the opacity reaches
:data:`LESION_THRESHOLD` (the part a reader could see), again inside the lungs.

* Pneumonia: one lung, one zone, dense and well bounded (a straight fissure edge, the pleura),
  lobulated elsewhere, with air bronchograms.
* COVID-19: both lungs, several hazy patches along the lateral pleura, lower zones favoured.

Where the disease sits is drawn from the patient's layout generator, so a patient's two films
show it in the same place; extent and density vary per film with the severity.
"""

from __future__ import annotations

import math

import numpy as np

from cxrguide.data.synthetic.anatomy import LEFT, LUNG_VALUES, RIGHT, Body, x_range
from cxrguide.data.synthetic.canvas import Canvas, smooth_noise

LESION_THRESHOLD = 0.08
ZONES = {"upper": 0.22, "middle": 0.5, "lower": 0.76}


def sample_severity(label: str, rng: np.random.Generator) -> float:
    """0 for Normal; else spread over (0, 1] with a share of subtle cases."""
    if label == "Normal":
        return 0.0
    return float(np.clip(rng.beta(1.6, 1.3), 0.05, 1.0))


def render_finding(
    cv: Canvas,
    body: Body,
    label: str,
    severity: float,
    layout: np.random.Generator,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Opacity map (float32) and exact lesion mask (bool), both zero outside the lungs."""
    opacity = np.zeros((cv.size, cv.size), np.float32)
    if label == "Pneumonia":
        _consolidation(cv, body, severity, layout, rng, opacity)
    elif label == "COVID-19":
        _ground_glass(cv, body, severity, layout, rng, opacity)
    lung = body.lung_mask > 0
    opacity *= lung
    return opacity, opacity >= LESION_THRESHOLD


def _zone_point(
    poly: np.ndarray, frac_y: float, frac_x: float
) -> tuple[float, float, float, float]:
    """Canonical point at relative height/width inside a lung outline (+ lung height, width)."""
    y0, y1 = float(poly[:, 1].min()), float(poly[:, 1].max())
    y = y0 + frac_y * (y1 - y0)
    lo, hi = x_range(poly, y)
    return lo + frac_x * (hi - lo), y, y1 - y0, hi - lo


def _inside(cv: Canvas, body: Body, side: int, x: float, y: float, margin: float) -> bool:
    """Whether the canonical point and a box of ``margin`` around it lie in lung ``side``."""
    value = LUNG_VALUES[side]
    m = body.lung_mask
    for dx, dy in ((0, 0), (margin, 0), (-margin, 0), (0, margin), (0, -margin)):
        px, py = np.round(cv.to_px(np.array([x + dx, y + dy]))).astype(int)
        if not (0 <= px < m.shape[1] and 0 <= py < m.shape[0]) or m[py, px] != value:
            return False
    return True


def _consolidation(cv, body, severity, layout, rng, out) -> None:
    side = RIGHT if layout.random() < 0.5 else LEFT
    zone = list(ZONES)[layout.integers(len(ZONES))]
    poly = body.outlines[side]
    fy = ZONES[zone] + layout.uniform(-0.06, 0.06) + rng.uniform(-0.02, 0.02)
    fx = layout.uniform(0.35, 0.7)
    cx, cy, h, w = _zone_point(poly, fy, fx)
    for k in range(8):  # step toward mid-lung until the centre is well inside this lung
        if _inside(cv, body, side, cx, cy, 0.03):
            break
        cx, cy, h, w = _zone_point(
            poly, fy + (0.5 - fy) * (k + 1) / 8, fx + (0.5 - fx) * (k + 1) / 8
        )
    scale = 0.7 + 0.6 * severity
    rx = w * rng.uniform(0.45, 0.65) * scale
    ry = h * rng.uniform(0.18, 0.28) * scale
    rows, cols = cv.window((cx, cy), max(rx, ry) * 1.3)
    u, v = cv.grid_at(rows, cols)
    du, dv = u - np.float32(cx), v - np.float32(cy)
    ang = np.arctan2(dv, du)
    lobes = 1 + 0.12 * np.sin(3 * ang + layout.uniform(0, 6.3)) + 0.08 * np.sin(5 * ang + 1.0)
    r2 = ((du / rx) ** 2 + (dv / ry) ** 2) / lobes**2
    # fissure: a straight edge cutting the blob (consolidation stops at the fissure)
    t = layout.uniform(-0.5, 0.5) * math.pi / 3 + (math.pi / 2 if layout.random() < 0.5 else 0)
    cut = du * math.cos(t) + dv * math.sin(t) < layout.uniform(0.3, 0.9) * min(rx, ry)
    density = 0.45 + 0.5 * severity
    tex = smooth_noise(rng, cv.size, 18)[rows, cols]
    field = np.sqrt(np.clip((1 - r2) / 0.3, 0, 1)) * cut * (0.88 + 0.12 * tex)
    # air bronchograms: short branching tubes pointing away from the hilum, in the dense core
    lay = cv.layer()
    for _ in range(int(1 + 2.5 * severity)):
        a = rng.uniform(-0.7, 0.7)
        direction = np.array([math.cos(a) * side, math.sin(a)])
        start = np.array([cx, cy]) - direction * rx * rng.uniform(0.2, 0.5)
        mid = start + direction * rx * rng.uniform(0.4, 0.6)
        for b in (-0.35, 0.35):
            tip = mid + np.array([math.cos(a + b) * side, math.sin(a + b)]) * rx * 0.35
            lay.line(np.array([start, mid, tip]), 1.0, 0.006)
    bronch = lay.array()[rows, cols]
    field *= 1 - 0.22 * bronch * (field > 0.7)
    out[rows, cols] = np.maximum(out[rows, cols], np.float32(density) * field)


def _ground_glass(cv, body, severity, layout, rng, out) -> None:
    n = 2 + int(round(2 + 3 * severity + rng.uniform(-0.5, 0.5)))
    sides = [RIGHT, LEFT] + [RIGHT if layout.random() < 0.5 else LEFT for _ in range(n - 2)]
    tex = smooth_noise(rng, cv.size, 24)
    for k, side in enumerate(sides):
        poly = body.outlines[side]
        for _ in range(10):  # lower zones favoured, close to the lateral pleura, inside the lung
            fy = 0.3 + 0.56 * layout.beta(2.2, 1.3) + rng.uniform(-0.03, 0.03)
            depth = layout.uniform(0.05, 0.18)
            cx, cy, h, w = _zone_point(poly, fy, depth if side == RIGHT else 1 - depth)
            if _inside(cv, body, side, cx, cy, 0.02):
                break
        else:
            cx, cy, h, w = _zone_point(poly, 0.6, 0.25 if side == RIGHT else 0.75)
        sx = w * rng.uniform(0.14, 0.22) * (0.8 + 0.5 * severity)
        sy = sx * rng.uniform(1.2, 1.9)
        tilt = rng.uniform(-0.4, 0.4)
        rows, cols = cv.window((cx, cy), 3 * max(sx, sy))
        u, v = cv.grid_at(rows, cols)
        du, dv = u - np.float32(cx), v - np.float32(cy)
        a, b = du * math.cos(tilt) + dv * math.sin(tilt), -du * math.sin(tilt) + dv * math.cos(tilt)
        blob = np.exp(-0.5 * ((a / sx) ** 2 + (b / sy) ** 2))
        dens = (0.25 + 0.35 * severity) * rng.uniform(0.8, 1.1) * (1.0 if k < 2 else 0.85)
        patch = np.float32(dens) * blob * (0.75 + 0.25 * np.clip(tex[rows, cols], -1, 1))
        out[rows, cols] = np.minimum(out[rows, cols] + patch, np.float32(0.75))
