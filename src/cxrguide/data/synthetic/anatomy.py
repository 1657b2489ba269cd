"""Frontal chest anatomy: lung outlines, soft tissue, heart, bones, vessels.

Densities are additive attenuation values (soft tissue ~1, aerated lung removes most of it), so
overlapping structures add up as they do on a radiograph: a rib over a lung is brighter than the
lung, the spine shows faintly through the heart. All shapes are drawn in the canonical frame of
:mod:`.canvas`; one patient's :class:`Anatomy` is sampled once, so a patient's second film shows
the same chest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from cxrguide.data.synthetic.canvas import Canvas, smooth_noise, upsample

RIGHT, LEFT = -1, +1  # patient's right lung is on the image left (PA convention)
LUNG_NAMES = {RIGHT: "Right Lung", LEFT: "Left Lung"}
LUNG_VALUES = {RIGHT: 128, LEFT: 255}
AIR = 0.68  # attenuation removed by fully aerated lung (soft tissue ~ 1)


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest, in canonical units (fractions of the film side)."""

    cx: float  # midline
    body_w: float  # half-width of the chest wall
    neck_w: float
    shoulder_y: float
    arms: float  # 0: arms out of view, else half-width of the arm shadows
    apex_y: float  # top of the lung apices
    lung_w: tuple[float, float]  # lateral half-extent of right / left lung
    dome_y: tuple[float, float]  # diaphragm dome peaks, right / left
    cp_drop: float  # costophrenic angle below the dome
    med_top: float  # upper mediastinum half-width
    heart: tuple[float, float, float, float, float]  # centre x, y, long/short semi-axis, tilt
    overlap: float  # how far the lung outline reaches under the heart border
    lat_power: float  # lateral border roundness
    wobble: tuple[float, float, float, float]  # (amp, phase) per side
    rib_space: float
    rib_width: float
    clav_y: float
    spine_w: float
    breast: float  # 0 or the breast-shadow density
    gastric: bool


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A random but plausible chest as seen on a PA film (see :func:`as_view` for AP)."""
    cx = 0.5 + rng.normal(0, 0.008)
    apex = rng.uniform(0.09, 0.14)
    dome_r = rng.uniform(0.63, 0.72)
    dome_l = dome_r + rng.uniform(0.01, 0.04)
    w = rng.uniform(0.27, 0.335)
    heart_ry = rng.uniform(0.115, 0.14)
    return Anatomy(
        cx=cx,
        body_w=w + rng.uniform(0.07, 0.14),
        neck_w=rng.uniform(0.075, 0.1),
        shoulder_y=rng.uniform(0.0, 0.07),
        arms=rng.uniform(0.05, 0.08) if rng.random() < 0.6 else 0.0,
        apex_y=apex,
        lung_w=(w, w * rng.uniform(0.95, 1.03)),
        dome_y=(dome_r, dome_l),
        cp_drop=rng.uniform(0.06, 0.1),
        med_top=rng.uniform(0.04, 0.055),
        heart=(
            cx + rng.uniform(0.035, 0.06),
            dome_l - rng.uniform(0.04, 0.08),
            rng.uniform(0.15, 0.18),
            heart_ry,
            rng.uniform(0.35, 0.6),
        ),
        overlap=rng.uniform(0.93, 0.99),
        lat_power=rng.uniform(2.0, 3.2),
        wobble=(
            rng.uniform(0, 0.02),
            rng.uniform(0, 6.3),
            rng.uniform(0, 0.02),
            rng.uniform(0, 6.3),
        ),
        rib_space=(dome_r - apex) / rng.uniform(7.6, 8.6),
        rib_width=rng.uniform(0.026, 0.032),
        clav_y=apex + rng.uniform(0.05, 0.09),
        spine_w=rng.uniform(0.06, 0.075),
        breast=rng.uniform(0.08, 0.16) if rng.random() < 0.4 else 0.0,
        gastric=bool(rng.random() < 0.6),
    )


def as_view(a: Anatomy, view: str) -> Anatomy:
    """The same chest on an AP film: heart magnified, shallower inspiration, clavicles higher."""
    if view != "AP":
        return a
    hx, hy, rx, ry, tilt = a.heart
    return replace(
        a,
        heart=(hx, hy - 0.03, rx * 1.12, ry * 1.06, tilt * 0.9),
        dome_y=(a.dome_y[0] - 0.03, a.dome_y[1] - 0.03),
        clav_y=a.clav_y - 0.03,
    )


def _heart_extent(a: Anatomy, y: np.ndarray, side: int) -> np.ndarray:
    """Distance from the midline to the heart border on ``side`` at heights ``y`` (0 off it)."""
    hx, hy, rx, ry, t = a.heart
    c, s = math.cos(t), math.sin(t)
    dy = y - hy
    qa = c * c / rx**2 + s * s / ry**2
    qb = 2 * dy * s * c * (1 / rx**2 - 1 / ry**2)
    qc = dy * dy * (s * s / rx**2 + c * c / ry**2) - 1
    disc = qb * qb - 4 * qa * qc
    root = np.sqrt(np.clip(disc, 0, None))
    dx = (-qb + side * root) / (2 * qa)  # right-most root for the left side and vice versa
    return np.where(disc > 0, (hx + dx - a.cx) * side, 0.0)


def lung_outline(a: Anatomy, side: int, k: int = 22) -> np.ndarray:
    """Closed canonical polygon of one lung field: apex cap, lateral wall, dome, mediastinum."""
    i = 0 if side == RIGHT else 1
    w, dome = a.lung_w[i], a.dome_y[i]
    cp = dome + a.cp_drop
    cap_h = 0.065
    ya = a.apex_y + cap_h
    amp, phase = a.wobble[2 * i], a.wobble[2 * i + 1]

    def medial(y: np.ndarray) -> np.ndarray:
        base = a.med_top + 0.012 * np.clip((y - ya) / (dome - ya), 0, 1)
        if side == LEFT:  # aortic knob
            base = base + 0.022 * np.exp(-(((y - (a.apex_y + 0.15)) / 0.035) ** 2))
        d = np.maximum(base, _heart_extent(a, y, side) * a.overlap)
        return np.minimum(d, lateral(y) - 0.06)

    d_top = a.med_top + 0.38 * w  # apex cap width: keeps the apices rounded

    def lateral(y: np.ndarray) -> np.ndarray:
        t = np.clip((y - ya) / (cp - ya), 0, 1)
        d = d_top + (w - d_top) * (1 - (1 - t) ** a.lat_power)
        return d * (1 + amp * np.sin(3 * math.pi * t + phase))

    # apex cap, medial -> lateral
    th = np.linspace(0, math.pi, k // 2)
    m0 = float(medial(np.array([ya]))[0])
    l0 = float(lateral(np.array([ya]))[0])
    cap_d = (m0 + l0) / 2 - (l0 - m0) / 2 * np.cos(th)
    cap_y = ya - cap_h * np.sin(th) ** 0.6
    # lateral wall, top -> costophrenic angle
    lat_y = np.linspace(ya, cp, k)[1:]
    lat_d = lateral(lat_y)
    # diaphragm dome, lateral -> medial
    y_mb = dome + (0.02 if side == RIGHT else 0.008)
    d_mb = float(medial(np.array([y_mb]))[0])
    d_cp = float(lat_d[-1])
    peak = d_mb + 0.5 * (d_cp - d_mb)
    dd = np.linspace(d_cp, d_mb, k)[1:]
    dy = np.where(
        dd >= peak,
        dome + (cp - dome) * np.clip((dd - peak) / max(d_cp - peak, 1e-6), 0, 1) ** 1.8,
        dome + (y_mb - dome) * np.clip((peak - dd) / max(peak - d_mb, 1e-6), 0, 1) ** 2,
    )
    # mediastinal border, bottom -> top
    med_y = np.linspace(y_mb, ya, k)[1:-1]
    med_d = medial(med_y)
    d = np.concatenate([cap_d, lat_d, dd, med_d])
    y = np.concatenate([cap_y, lat_y, dy, med_y])
    return np.stack([a.cx + side * d, y], axis=1)


def _soft_tissue(cv: Canvas, a: Anatomy) -> np.ndarray:
    """Chest wall, neck, shoulders and arms: path-length-like thickness, smooth edges."""
    u, v = cv.grid
    d = np.abs(u - np.float32(a.cx))
    e = np.float32(0.012)
    hw = np.float32(a.body_w) * (0.86 + 0.14 * np.sin(np.pi * np.clip((v + 0.15) / 1.3, 0, 1)))
    reach = np.clip((d - a.neck_w) / (hw + 0.02 - a.neck_w), 0, 1)
    top = np.float32(a.shoulder_y) + np.float32(0.05) * reach + np.float32(0.12) * reach**4
    below_shoulder = _sig((v - top) / e)
    wall = _sig((hw - d) / e)
    thick = np.sqrt(np.clip(1 - (d / np.float32(a.body_w + 0.06)) ** 2, 0, None))
    body = wall * np.maximum(below_shoulder, _sig((np.float32(a.neck_w) - d) / e))
    t = body * (np.float32(0.3) + np.float32(0.7) * thick)
    if a.arms > 0:
        da = np.abs(d - np.float32(a.body_w + 0.025 + a.arms))
        arm = _sig((np.float32(a.arms) - da) / e) * _sig((v - np.float32(a.shoulder_y + 0.04)) / e)
        t = t + np.float32(0.55) * arm * np.sqrt(np.clip(1 - (da / a.arms) ** 2, 0, None))
    return t


def _sig(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) + np.float32(0.5) * np.tanh(np.clip(x, -20, 20) * np.float32(0.5))


def _bones(cv: Canvas, a: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Spine, posterior and anterior ribs, clavicles (cortex brighter than the marrow).

    PIL overwrites instead of adding, so shapes that may cross go on separate layers; within a
    layer the overwrite is what draws the cortex (outer stroke) around a darker marrow stroke.
    """
    post, ant = cv.layer(), cv.layer()
    spine = _spine(cv, a, rng)
    t = np.linspace(0, 1, 8)[None, :]
    i = np.arange(11)[:, None]
    for side in (RIGHT, LEFT):
        w = a.lung_w[0 if side == RIGHT else 1]
        y0 = a.apex_y - 0.03 + i * a.rib_space
        length = (w + 0.05) * (0.5 + 0.5 * np.minimum(1.0, i / 3)) + rng.normal(0, 0.008, (11, 1))
        d = 0.03 + t * length
        yy = y0 - 0.09 * t + (0.2 + 0.012 * i) * t**2
        width = a.rib_width * (0.8 + 0.03 * i[:, 0])
        ribs = np.stack([a.cx + side * d, yy], axis=2)
        post.bands(ribs, [(1.0, width), (0.6, width * 0.55)])
        # anterior ribs: from the lateral ends forward and down towards the sternum
        end_d, end_y = d[:, -1:], yy[:, -1:]
        ant_d = end_d - t * (end_d - 0.1 - 0.015 * i)
        ant_y = end_y + 0.02 + 0.12 * np.sin(t * math.pi / 2)
        ant_ribs = np.stack([a.cx + side * ant_d, ant_y], axis=2)[:8]  # lower ones: abdomen
        ant.bands(ant_ribs, [(0.27, width[:8] * 0.75)])
        # clavicle: sternal end low and medial, acromial end high and lateral
        cd = 0.045 + t * 0.3
        cy = a.clav_y + 0.03 - 0.07 * t + 0.018 * np.sin(t * 2 * math.pi)
        clav = np.stack([a.cx + side * cd, cy], axis=2)
        ant.bands(clav, [(1.0, 0.03), (0.69, 0.014)])
    out = post.array(0.12) + ant.array(0.21)
    rows, cols, field = spine
    out[rows, cols] += np.float32(0.075) * field
    return out


def _spine(cv: Canvas, a: Anatomy, rng: np.random.Generator) -> tuple[slice, slice, np.ndarray]:
    """Vertebral bodies, disc spaces and pedicles, evaluated only in the spine's pixel columns."""
    top, bottom = cv.to_px(np.array([a.cx, -0.1])), cv.to_px(np.array([a.cx, 1.1]))
    half = cv.px_len(a.spine_w) * 0.75 + 2
    c0 = int(max(0, min(top[0], bottom[0]) - half))
    c1 = int(min(cv.size, max(top[0], bottom[0]) + half + 1))
    u, v = cv.grid_at(slice(0, cv.size), slice(c0, c1))
    u = u - np.float32(a.cx)
    h = a.rib_space * rng.uniform(0.62, 0.7)
    phase = ((v - np.float32(rng.uniform(0, h))) / np.float32(h)) % 1.0
    sw = np.float32(a.spine_w)
    body = (np.abs(u) < sw / 2) & (phase < 0.82)
    ped = ((np.abs(u) - sw * 0.36) / 0.011) ** 2 + ((phase - 0.35) * h / 0.016) ** 2 < 1
    field = body.astype(np.float32) + np.float32(0.6) * ped
    return slice(0, cv.size), slice(c0, c1), field


def _vessels(cv: Canvas, a: Anatomy, outlines: dict, rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vessels: curved, tapering, fading branches fanning out of each hilum (masked
    to the lungs by the caller)."""
    lay = cv.layer()
    n = 10
    t = np.linspace(0, 1, 4)[None, :, None]  # 3 segments per vessel
    for side, poly in outlines.items():
        hy = a.apex_y + 0.38 * (a.dome_y[0] - a.apex_y)
        hx = a.cx + side * (a.med_top + 0.045)
        lay.ellipse((hx, hy + 0.02), 0.03, 0.05, 0.0, 0.67)  # hilar shadow
        ty = rng.uniform(poly[:, 1].min() + 0.04, poly[:, 1].max() - 0.02, n)
        lo, hi = x_ranges(poly, ty)
        tx = lo + rng.uniform(0.15, 0.9, n) * (hi - lo)
        start = np.stack([np.full(n, hx), hy + rng.normal(0, 0.02, n)], 1)[:, None]
        end = np.stack([tx, ty], 1)[:, None]
        bend = (start + end) / 2 + rng.normal(0, 0.025, (n, 1, 2))
        trunk = cv.to_px((1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * end)
        fork_end = end[:, 0] + rng.normal(0, 0.05, (n, 2))
        mid = (bend[:, 0] + end[:, 0]) / 2
        branch = cv.to_px(np.stack([mid, (mid + fork_end) / 2, fork_end], 1))
        for paths, styles in (
            (trunk, ((1.0, 0.011), (0.75, 0.007), (0.5, 0.004))),
            (branch, ((0.55, 0.005), (0.4, 0.003))),
        ):
            for k, (value, width) in enumerate(styles):
                w, ink = max(1, round(cv.px_len(width))), lay.ink(value)
                for seg in paths[:, k : k + 2].reshape(n, 4).tolist():
                    lay.draw.line(seg, fill=ink, width=w)
    return lay.array(0.15)


def x_ranges(poly: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x-range of the polygon at each height in ``ys`` (for sampling points inside a lung)."""
    p, q = poly[None], np.roll(poly, -1, axis=0)[None]
    y = np.asarray(ys, dtype=float)[:, None]
    cross = ((p[..., 1] - y) * (q[..., 1] - y) <= 0) & (p[..., 1] != q[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = p[..., 0] + (y - p[..., 1]) * (q[..., 0] - p[..., 0]) / (q[..., 1] - p[..., 1])
    lo = np.where(cross, xs, np.inf).min(axis=1)
    hi = np.where(cross, xs, -np.inf).max(axis=1)
    bad = ~np.isfinite(lo) | ~np.isfinite(hi)
    lo[bad], hi[bad] = poly[:, 0].min(), poly[:, 0].max()
    return lo, hi


def x_range(poly: np.ndarray, y: float) -> tuple[float, float]:
    lo, hi = x_ranges(poly, np.array([y]))
    return float(lo[0]), float(hi[0])


@dataclass
class Body:
    """A rendered chest before findings: densities, air map, exact lung polygons and mask."""

    att: np.ndarray  # additive attenuation (float32, H x W)
    air: np.ndarray  # attenuation the lung air removes; a finding of opacity 1 restores it
    lung_mask: np.ndarray  # uint8: 0 background, 128 right lung, 255 left lung
    polygons: dict[str, np.ndarray]  # "Right Lung"/"Left Lung" -> pixel (K, 2), as rasterised
    outlines: dict[int, np.ndarray]  # side -> canonical outline


def _smooth_fields(
    cv: Canvas, a: Anatomy, hard: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Everything smooth, computed on a 4x coarser grid and upsampled once: soft tissue, heart,
    abdomen, trachea, aortic knob, gastric bubble, breasts (densities), and the air depth map
    (aerated lung is thickest in the middle of each field) with its parenchymal texture."""
    low = cv.scaled(4)
    att = _soft_tissue(low, a)
    u, v = low.grid
    hx, hy, rx, ry, t = a.heart
    du, dv = u - np.float32(hx), v - np.float32(hy)
    c, s = np.float32(math.cos(t)), np.float32(math.sin(t))
    r2 = ((du * c + dv * s) / np.float32(rx)) ** 2 + ((dv * c - du * s) / np.float32(ry)) ** 2
    heart = np.minimum(np.sqrt(np.clip(1 - r2, 0, None)) * 3, 1)
    att += np.float32(0.07) * heart * _sig((np.float32(a.dome_y[1] + 0.02) - v) / np.float32(0.01))
    d = np.abs(u - np.float32(a.cx))
    e = np.float32(0.008)
    dome = np.where(u < a.cx, np.float32(a.dome_y[0]), np.float32(a.dome_y[1]))
    dome = dome + np.float32(0.015) + np.float32(0.12) * np.clip((d - 0.12) / 0.22, 0, 1) ** 2
    att += np.float32(0.28) * _sig((v - dome) / np.float32(0.015))  # abdomen is thicker
    att -= np.float32(0.12) * _sig((0.018 - d) / e) * _sig((a.apex_y + 0.2 - v) / e)  # trachea
    knob = ((u - np.float32(a.cx + 0.05)) ** 2 + (v - np.float32(a.apex_y + 0.15)) ** 2) / 0.033**2
    att += np.float32(0.15) * _sig((1 - knob) / 0.3)
    if a.gastric:
        gx, gy = a.cx + 0.15, a.dome_y[1] + 0.065
        g = ((u - np.float32(gx)) / 0.055) ** 2 + ((v - np.float32(gy)) / 0.035) ** 2
        att -= np.float32(0.3) * _sig((1 - g) / 0.2) * _sig((gy + 0.012 - v) / e)
    if a.breast > 0:
        for side in (RIGHT, LEFT):
            bx = a.cx + side * a.lung_w[0] * 0.6
            by = a.dome_y[0] - 0.02
            rb = ((u - np.float32(bx)) / 0.2) ** 2 + ((v - np.float32(by)) / 0.16) ** 2
            att += np.float32(a.breast) * np.sqrt(np.clip(1 - rb, 0, None)) * (v > by - 0.1)
    small = Image.fromarray(hard).resize((low.size, low.size), Image.Resampling.BOX)
    depth = ndimage.gaussian_filter(
        np.asarray(small), low.px_len(0.05), mode="nearest", truncate=2.5
    )
    air = np.float32(0.35) + np.float32(0.65) * np.clip(depth * 1.6 - 0.2, 0, 1)
    coarse, fine = smooth_noise(rng, low.size, 12), smooth_noise(rng, low.size, 40)
    air *= np.float32(AIR) * (1 + np.float32(0.06) * coarse + np.float32(0.04) * fine)
    return upsample(att, cv.size), upsample(air, cv.size)


def render_body(cv: Canvas, a: Anatomy, rng: np.random.Generator) -> Body:
    outlines = {side: lung_outline(a, side) for side in (RIGHT, LEFT)}
    mask = np.zeros((cv.size, cv.size), np.uint8)
    polygons = {}
    for side, poly in outlines.items():
        px = np.round(cv.to_px(poly), 2)
        polygons[LUNG_NAMES[side]] = px
        mask[cv.polygon_mask(px)] = LUNG_VALUES[side]
    hard = (mask > 0).astype(np.float32)
    att, air = _smooth_fields(cv, a, hard, rng)
    air *= hard
    att -= air
    att += _vessels(cv, a, outlines, rng) * hard
    att += _bones(cv, a, rng)
    return Body(att=att, air=air, lung_mask=mask, polygons=polygons, outlines=outlines)
