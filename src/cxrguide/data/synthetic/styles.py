"""Acquisition styles: what makes films from different hospitals look different.

A style fixes the detector response (a film-like characteristic curve: exposure, mid-point,
latitude, gamma, display window), noise and blur, edge enhancement, the usual field of view and
rotation, and a border (none, black mask, white collimation). ``prepare`` treats the style as the
image's source, so models and splits see the same kind of site effects as with real data. Style
``k`` depends on ``k`` only (not on the dataset seed): style 0 is always the same neutral look.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from cxrguide.data.synthetic.canvas import Canvas, blur, smooth_noise


@dataclass(frozen=True)
class Style:
    index: int
    exposure: float  # multiplies attenuation
    mid: float  # attenuation at the middle of the characteristic curve
    latitude: float  # its width (higher: flatter, greyer films)
    gamma: float
    black: float  # display window
    white: float
    noise: float  # quantum noise sigma (fraction of full scale)
    mottle: float  # low-frequency detector non-uniformity
    blur: float  # focal-spot/detector blur in pixels at 256 px
    sharpen: float  # unsharp-mask amount (digital processing)
    zoom: float  # field of view: > 1 is tighter framing
    shift_y: float
    max_rotation: float  # degrees
    border: str  # "none", "black" or "white"
    border_width: float  # fraction of the side


NEUTRAL = Style(
    index=0,
    exposure=1.0,
    mid=0.58,
    latitude=0.26,
    gamma=0.9,
    black=0.02,
    white=0.97,
    noise=0.018,
    mottle=0.015,
    blur=0.7,
    sharpen=0.3,
    zoom=1.0,
    shift_y=0.0,
    max_rotation=2.0,
    border="none",
    border_width=0.0,
)


def style_for(k: int) -> Style:
    """Style ``k`` (0 is neutral; the others are drawn from a generator seeded with ``k``)."""
    if k == 0:
        return NEUTRAL
    r = np.random.default_rng([0x5E7, k])
    border = ("none", "black", "white")[int(r.integers(3))]
    return Style(
        index=k,
        exposure=float(r.uniform(0.85, 1.15)),
        mid=float(r.uniform(0.5, 0.66)),
        latitude=float(r.uniform(0.2, 0.32)),
        gamma=float(r.uniform(0.75, 1.15)),
        black=float(r.uniform(0.0, 0.08)),
        white=float(r.uniform(0.86, 1.0)),
        noise=float(r.uniform(0.008, 0.04)),
        mottle=float(r.uniform(0.0, 0.04)),
        blur=float(r.uniform(0.4, 1.3)),
        sharpen=float(r.uniform(0.0, 0.8)),
        zoom=float(r.uniform(0.92, 1.12)),
        shift_y=float(r.uniform(-0.03, 0.03)),
        max_rotation=float(r.uniform(1.0, 4.0)),
        border=border,
        border_width=0.0 if border == "none" else float(r.uniform(0.015, 0.05)),
    )


@dataclass(frozen=True)
class Acquisition:
    """One film's geometry and exposure: the style plus per-image jitter."""

    style: Style
    zoom: float
    angle: float
    shift: tuple[float, float]
    exposure: float

    def canvas(self, size: int) -> Canvas:
        return Canvas(size, self.zoom, self.angle, self.shift)


def frame_lungs(acq: Acquisition, top: float, bottom: float) -> Acquisition:
    """Re-centre (and if needed widen) the field of view so the lungs, canonical heights
    ``top``..``bottom``, lie within 6 %..95 % of the film height, as a radiographer would."""
    lo_edge, hi_edge = 0.06, 0.95
    zoom = min(acq.zoom, (hi_edge - lo_edge) / max(bottom - top, 1e-6))
    lo = lo_edge - 0.5 - zoom * (top - 0.5)  # smallest shift keeping the apices in view
    hi = hi_edge - 0.5 - zoom * (bottom - 0.5)  # largest shift keeping the bases in view
    shift_y = float(np.clip(acq.shift[1], lo, max(lo, hi)))
    return replace(acq, zoom=zoom, shift=(acq.shift[0], shift_y))


def sample_acquisition(style: Style, rng: np.random.Generator) -> Acquisition:
    return Acquisition(
        style=style,
        zoom=style.zoom * rng.uniform(0.96, 1.04),
        angle=rng.uniform(-style.max_rotation, style.max_rotation),
        shift=(rng.normal(0, 0.012), style.shift_y + rng.normal(0, 0.012)),
        exposure=style.exposure * rng.uniform(0.93, 1.07),
    )


ATT_LO, ATT_HI, LEVELS = -0.6, 2.6, 4096  # attenuation range and resolution of the film LUT


@lru_cache(maxsize=64)
def film_lut(s: Style) -> np.ndarray:
    """Displayed brightness at each attenuation level: a film-like characteristic curve (air
    black, soft tissue light grey, bone white), gamma, then the display window."""
    x = ATT_LO + (np.arange(LEVELS) + 0.5) * (ATT_HI - ATT_LO) / LEVELS
    lo = 1 / (1 + np.exp(s.mid / s.latitude))
    img = 1 / (1 + np.exp((s.mid - x) / s.latitude))
    img = np.clip((img - lo) / (1 - lo), 0, 1) ** s.gamma
    return (s.black + (s.white - s.black) * img).astype(np.float32)


def _levels(x: np.ndarray) -> np.ndarray:
    q = ((x - np.float32(ATT_LO)) * np.float32(LEVELS / (ATT_HI - ATT_LO))).astype(np.int32)
    return np.clip(q, 0, LEVELS - 1, out=q)


def matched_lut(q: np.ndarray, q_ref: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """LUT over levels that gives levels ``q`` the brightness distribution ``lut[q_ref]`` has.

    Each level goes to the brightness at the same quantile of the reference (mid-rank), so the
    map is monotone: what is brighter stays brighter, only the global histogram is pinned."""
    n = q.size
    counts = np.bincount(q.ravel(), minlength=LEVELS)
    cdf_ref = np.cumsum(np.bincount(q_ref.ravel(), minlength=LEVELS)) / n
    mid = (np.cumsum(counts) - counts / 2) / n
    # brightness of the reference at quantile p: first level whose cdf reaches p
    idx = np.minimum(np.searchsorted(cdf_ref, mid), LEVELS - 1)
    return lut[idx]


def match_histogram(img: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``img`` remapped (monotone) to the histogram of ``reference``, both in [0, 1]."""
    q = np.minimum((img * LEVELS).astype(np.int32), LEVELS - 1)
    qr = np.minimum((reference * LEVELS).astype(np.int32), LEVELS - 1)
    centres = ((np.arange(LEVELS) + 0.5) / LEVELS).astype(np.float32)
    return matched_lut(q, qr, centres)[q]


def expose(
    att: np.ndarray, acq: Acquisition, rng: np.random.Generator, reference: np.ndarray | None = None
) -> np.ndarray:
    """Attenuation -> displayed film brightness in [0, 1] (air black, bone white).

    With ``reference`` (the same film's attenuation without its finding) the display mapping is
    fitted so that the film's global histogram equals the finding-free one, the way a DR
    system's histogram-based auto-ranging would: the class then shows only locally, never in
    global statistics (``bench/synth_fairness.py`` checks it).
    """
    s = acq.style
    size = att.shape[0]
    scale = size / 256
    mottle = np.float32(s.mottle) * smooth_noise(rng, size, 6) if s.mottle > 0 else np.float32(0)
    q = _levels(att * np.float32(acq.exposure) + mottle)
    lut = film_lut(s)
    if reference is not None:
        lut = matched_lut(q, _levels(reference * np.float32(acq.exposure) + mottle), lut)
    img = blur(lut[q], s.blur * scale)
    if s.sharpen > 0:
        img = img + np.float32(s.sharpen) * (img - blur(img, 6 * scale))
    # quantum noise: a triangular distribution from two byte draws (std ~ s.noise), much
    # cheaper than Gaussian draws and indistinguishable on a film
    raw = np.frombuffer(rng.bytes(2 * img.size), np.uint8).reshape(2, *img.shape)
    noise = raw[0].astype(np.float32) + raw[1] - np.float32(255)
    img = img + noise * np.float32(s.noise / 104.1)
    return np.clip(img, 0, 1)


def border_box(style: Style, size: int, lung_mask: np.ndarray) -> tuple[int, int, int, int]:
    """Exposed area (x0, y0, x1, y1) inside the border, never cutting into the lungs."""
    b = int(round(style.border_width * size))
    if b <= 0:
        return 0, 0, size, size
    ys, xs = np.nonzero(lung_mask)
    if len(xs):
        b = min(b, int(xs.min()), int(ys.min()), size - 1 - int(xs.max()), size - 1 - int(ys.max()))
    b = max(b, 0)
    return b, b, size - b, size - b


def apply_border(img: np.ndarray, style: Style, box: tuple[int, int, int, int]) -> None:
    """Black mask or bright collimator edge outside ``box`` (in place)."""
    if style.border == "none":
        return
    x0, y0, x1, y1 = box
    value = 0.0 if style.border == "black" else 0.94
    img[:y0] = value
    img[y1:] = value
    img[:, :x0] = value
    img[:, x1:] = value
