"""Drawing surface shared by the anatomy, finding and marker painters.

Anatomy is described in a *canonical* frame (x, y in [0, 1], image orientation: x to the right
of the film, y down) so that one set of shape rules works at any pixel size. A :class:`Canvas`
maps that frame to pixels through one affine transform (field-of-view zoom, shift and a slight
rotation), which is applied to every polygon *before* it is rasterised: masks therefore stay exact
(they are the rasterised polygons themselves) instead of being resampled images.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

Points = np.ndarray  # (K, 2) float array of (x, y)


class Canvas:
    """Canonical -> pixel transform plus cheap raster helpers for one ``size`` x ``size`` image."""

    def __init__(
        self, size: int, zoom: float = 1.0, angle_deg: float = 0.0, shift: tuple = (0.0, 0.0)
    ) -> None:
        self.size = int(size)
        self.zoom = float(zoom)
        a = math.radians(angle_deg)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        # pixel = size * (zoom * R @ (p - 0.5) + 0.5 + shift)
        self._lin = self.size * self.zoom * rot
        self._off = self.size * (0.5 + np.asarray(shift, dtype=float))
        self._inv = np.linalg.inv(self._lin)

    def scaled(self, factor: int) -> Canvas:
        """The same canonical frame on a grid ``factor`` times coarser (for smooth fields).

        Low-res pixel j covers full-res pixels f*j .. f*j+f-1, so its centre sits at f*j+(f-1)/2,
        which is what PIL's resize assumes when the field is upsampled again.
        """
        low = Canvas.__new__(Canvas)
        low.size = -(-self.size // factor)
        low.zoom = self.zoom / factor
        low._lin = self._lin / factor
        low._off = (self._off - (factor - 1) / 2) / factor
        low._inv = np.linalg.inv(low._lin)
        return low

    # ---- geometry -------------------------------------------------------------------------
    def to_px(self, pts: Points) -> Points:
        """Canonical points (..., 2) to pixel coordinates (PIL convention: pixel j at x = j)."""
        p = np.asarray(pts, dtype=float)
        return (p - 0.5) @ self._lin.T + self._off

    def px_len(self, length: float) -> float:
        """A canonical length in pixels."""
        return float(length * self.size * self.zoom)

    def grid_at(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (U, V) coordinates of the pixels in ``rows`` x ``cols`` (float32)."""
        ys = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - np.float32(self._off[1])
        xs = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - np.float32(self._off[0])
        inv = self._inv.astype(np.float32)
        u = inv[0, 0] * xs + inv[0, 1] * ys + np.float32(0.5)
        v = inv[1, 0] * xs + inv[1, 1] * ys + np.float32(0.5)
        return u, v

    @cached_property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (U, V) coordinates of every pixel (use :meth:`grid_at` for parts)."""
        return self.grid_at(slice(0, self.size), slice(0, self.size))

    def window(self, center: Points, radius: float) -> tuple[slice, slice]:
        """Pixel slices (rows, cols) of the box around a canonical point, clipped to the image."""
        cx, cy = self.to_px(np.asarray(center, dtype=float))
        r = self.px_len(radius) + 2
        x0, x1 = max(0, int(cx - r)), min(self.size, int(cx + r) + 1)
        y0, y1 = max(0, int(cy - r)), min(self.size, int(cy + r) + 1)
        return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))

    # ---- layers ---------------------------------------------------------------------------
    def layer(self) -> Layer:
        return Layer(self)

    def polygon_mask(self, px_pts: Points) -> np.ndarray:
        """Boolean mask of a polygon already in pixel coordinates (PIL's own rasteriser)."""
        img = Image.new("L", (self.size, self.size), 0)
        ImageDraw.Draw(img).polygon(np.asarray(px_pts, dtype=float).ravel().tolist(), fill=255)
        return np.asarray(img) > 0


class Layer:
    """An 8-bit PIL image to draw canonical shapes on; :meth:`array` scales it to a density.

    Values are relative (0..1, stored as 0..255). PIL overwrites instead of adding, so shapes
    that may cross and must add up go on separate layers. 8-bit keeps the PIL -> numpy copy
    four times cheaper than a float image, and the density weight is applied once at the end.
    """

    def __init__(self, canvas: Canvas) -> None:
        self.canvas = canvas
        self.image = Image.new("L", (canvas.size, canvas.size), 0)
        self.draw = ImageDraw.Draw(self.image)

    @staticmethod
    def ink(value: float) -> int:
        return int(round(min(max(value, 0.0), 1.0) * 255))

    def polygon(self, pts: Points, value: float) -> None:
        px = self.canvas.to_px(pts)
        self.draw.polygon(px.ravel().tolist(), fill=self.ink(value))

    def line(self, pts: Points, value: float, width: float) -> None:
        """Polyline of canonical ``width``; at least one pixel wide so nothing vanishes."""
        px = self.canvas.to_px(pts)
        w = max(1, round(self.canvas.px_len(width)))
        self.draw.line(px.ravel().tolist(), fill=self.ink(value), width=w)

    def bands(self, curves: np.ndarray, strokes: list[tuple[float, np.ndarray | float]]) -> None:
        """Thick curves (N, K, 2) as polygons with offset edges, one polygon per (value, width)
        stroke in order; one numpy pass for all N (PIL's wide round-joint lines are slower)."""
        px = self.canvas.to_px(curves)
        tang = np.empty_like(px)
        tang[:, 1:-1] = px[:, 2:] - px[:, :-2]
        tang[:, 0] = px[:, 1] - px[:, 0]
        tang[:, -1] = px[:, -1] - px[:, -2]
        tang /= np.sqrt((tang**2).sum(axis=2, keepdims=True)) + 1e-9
        unit = np.stack([-tang[..., 1], tang[..., 0]], axis=2)
        scale = self.canvas.size * self.canvas.zoom / 2
        for value, widths in strokes:
            half = np.broadcast_to(np.asarray(widths, dtype=float) * scale, px.shape[:1])
            normal = unit * half[:, None, None]
            polys = np.concatenate([px + normal, (px - normal)[:, ::-1]], axis=1)
            ink = self.ink(value)
            for flat in polys.reshape(len(polys), -1).tolist():
                self.draw.polygon(flat, fill=ink)

    def ellipse(self, center: Points, rx: float, ry: float, angle: float, value: float) -> None:
        if max(rx, ry) < 0.03:  # small ovals: the field-of-view rotation is invisible, skip it
            cx, cy = self.canvas.to_px(np.asarray(center, dtype=float))
            px, py = self.canvas.px_len(rx), self.canvas.px_len(ry)
            self.draw.ellipse((cx - px, cy - py, cx + px, cy + py), fill=self.ink(value))
            return
        self.polygon(ellipse_points(center, rx, ry, angle), value)

    def array(self, weight: float = 1.0) -> np.ndarray:
        """The layer as float32 densities: value 1 becomes ``weight``."""
        return np.asarray(self.image) * np.float32(weight / 255)


def ellipse_points(center: Points, rx: float, ry: float, angle: float = 0.0, k: int = 40) -> Points:
    """Ellipse outline as a polygon (canonical), rotated by ``angle`` radians."""
    t = np.linspace(0.0, 2 * math.pi, k, endpoint=False)
    ca, sa = math.cos(angle), math.sin(angle)
    x, y = rx * np.cos(t), ry * np.sin(t)
    return np.stack([center[0] + ca * x - sa * y, center[1] + sa * x + ca * y], axis=1)


def upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a smooth field computed on :meth:`Canvas.scaled`."""
    up = Image.fromarray(a.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return np.array(up, dtype=np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish std noise with features about ``size / cells`` pixels across."""
    cells = max(2, int(cells))
    low = rng.standard_normal((cells, cells), dtype=np.float32)
    up = Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32)


def _binomial(a: np.ndarray) -> np.ndarray:
    """One separable [1, 2, 1] / 4 pass (a Gaussian of variance 1/2), edges replicated."""
    p = np.pad(a, 1, mode="edge")
    r = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    return (r[:-2] + 2 * r[1:-1] + r[2:]) * np.float32(1 / 16)


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur. Small kernels: repeated binomial passes (variances add), the fraction of a
    pass blended in; wide kernels run on a downsampled copy. Both far cheaper than a full-size
    ``gaussian_filter`` and indistinguishable on a noisy film."""
    if sigma <= 0.2:
        return a
    passes = 2 * sigma * sigma
    if passes <= 6:
        out = a
        for _ in range(int(passes)):
            out = _binomial(out)
        frac = np.float32(passes - int(passes))
        if frac > 0.05:
            out = out + frac * (_binomial(out) - out)
        return out.astype(np.float32, copy=False)
    f = max(2, int(sigma / 1.5))
    h, w = a.shape
    small = Image.fromarray(a.astype(np.float32)).reduce(f)
    s = ndimage.gaussian_filter(np.asarray(small), sigma / f, mode="nearest", truncate=2.5)
    return np.asarray(
        Image.fromarray(s.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
