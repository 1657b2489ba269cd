"""Shortcut markers: burned-in tags, laterality letters and device-like shapes outside the lungs.

Real CXR collections carry confounders a classifier can latch onto (a hospital's "PORTABLE" tag,
an "R" letter, ECG electrodes). Here every film gets one marker at a *named* position. With
probability ``shortcut_rate`` the position is the one reserved for the film's class
(:data:`CLASS_POSITIONS`), otherwise it is drawn uniformly from :data:`POSITIONS`; the
``shortcut_test`` split always uses the position of a *different* class. A marker never touches
the lungs: it slides toward its corner (and shrinks if it must) until it is clear of the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "top-center", "bottom-center")
CLASS_POSITIONS = {"Normal": "top-left", "Pneumonia": "top-right", "COVID-19": "bottom-left"}
KINDS = ("tag", "letter", "device")
TAG_TEXTS = ("PORTABLE", "AP", "PA", "ERECT", "A1", "SUPINE", "CR")


@dataclass(frozen=True)
class Marker:
    kind: str
    position: str
    target_class: str  # class whose reserved position was used on purpose, else ""
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (exclusive end)


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, px))


def _glyph(
    kind: str, size: int, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, float, bool]:
    """Marker sprite: alpha (uint8 h x w), its brightness, and whether it sits on a dark label."""
    h = max(3 if scale < 0.7 else 5, int(round(size * 0.065 * scale)))
    if kind == "device":
        w = h
        img = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(img)
        if rng.random() < 0.5:  # ECG electrode: ring + snap
            lw = max(1, h // 6)
            d.ellipse((0, 0, w - 1, h - 1), outline=255, width=lw)
            c = h / 2
            d.ellipse((c - h / 6, c - h / 6, c + h / 6, c + h / 6), fill=255)
        else:  # clip / pacemaker-like can with a lead stub
            d.rounded_rectangle((0, h * 0.2, w * 0.8, h - 1), radius=max(1, h // 4), fill=255)
            d.line((w * 0.6, h * 0.3, w - 1, 0), fill=255, width=max(1, h // 8))
        return np.asarray(img), 0.98, False
    text = ("R", "L")[int(rng.integers(2))] if kind == "letter" else str(rng.choice(TAG_TEXTS))
    font = _font(int(h * (0.95 if kind == "letter" else 0.7)))
    left, top, right, bottom = font.getbbox(text)
    pad = max(1, h // 8)
    w = max(h // 2, right - left + 2 * pad)
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    if h < 16:  # tiny films: no anti-aliasing, or the letters fade to grey
        d.fontmode = "1"
    d.text(((w - (right - left)) / 2 - left, (h - (bottom - top)) / 2 - top), text, 255, font)
    return np.asarray(img), 0.97, kind == "tag"


def _anchor(position: str, size: int, w: int, h: int, margin: int) -> tuple[int, int]:
    vert, horiz = position.split("-")
    x = {"left": margin, "right": size - margin - w, "center": (size - w) // 2}[horiz]
    y = margin if vert == "top" else size - margin - h
    return x, y


def _clear(lungs: np.ndarray, x: int, y: int, w: int, h: int) -> bool:
    """No lung pixel under the box, nor (from 64 px on) in a one-pixel ring around it."""
    s = lungs.shape[0]
    g = 1 if s >= 64 else 0
    return not lungs[max(0, y - g) : min(s, y + h + g), max(0, x - g) : min(s, x + w + g)].any()


def _fit(sprite: np.ndarray, size: int) -> np.ndarray:
    """Squeeze a sprite wider than 30 % of the film (long tags on tiny films)."""
    h, w = sprite.shape
    max_w = max(3, int(0.3 * size))
    if w <= max_w:
        return sprite
    return np.asarray(Image.fromarray(sprite).resize((max_w, h), Image.Resampling.BOX))


def _search(lungs, position, size, w, h, margin, start) -> tuple[int, int] | None:
    """Nearest clear spot to ``start`` inside the named region (a corner or edge band)."""
    vert, horiz = position.split("-")
    xs = {
        "left": range(margin, max(margin, int(0.35 * size) - w) + 1),
        "right": range(min(size - margin - w, int(0.65 * size)), size - margin - w + 1),
        "center": range(
            max(margin, int(0.35 * size)), min(size - margin - w, int(0.65 * size) - w) + 1
        ),
    }[horiz]
    ys = (
        range(margin, max(margin, int(0.3 * size) - h) + 1)
        if vert == "top"
        else range(min(size - margin - h, int(0.7 * size)), size - margin - h + 1)
    )
    spots = [(x, y) for x in xs for y in ys]
    spots.sort(key=lambda p: (p[0] - start[0]) ** 2 + (p[1] - start[1]) ** 2)
    return next((p for p in spots if _clear(lungs, p[0], p[1], w, h)), None)


def place_marker(
    img: np.ndarray,
    lungs: np.ndarray,
    kind: str,
    position: str,
    target_class: str,
    rng: np.random.Generator,
    inside: tuple[int, int, int, int],
) -> Marker:
    """Draw one marker on ``img`` (float, in place) at ``position``, clear of ``lungs`` (bool).

    The marker starts at its anchor (plus jitter) and slides toward the edge; if the lungs
    still touch it, the nearest clear spot of the same corner/edge band is used, and failing
    that a smaller marker is tried (only ever needed on tiny, tightly framed films)."""
    size = img.shape[0]
    x0b, y0b, x1b, y1b = inside
    margin = int(size * 0.02) + max(x0b, y0b, size - x1b, size - y1b)
    vert, horiz = position.split("-")
    for attempt in range(4):
        if attempt < 3:
            sprite, value, label = _glyph(kind, size, rng, 0.8 ** (attempt * 2))
            sprite = _fit(sprite, size)
        else:  # last resort on tiny, tightly framed films: a small bright block
            side = max(2, size // 32)
            sprite, value, label = np.full((side, side), 255, np.uint8), 0.97, False
        h, w = sprite.shape
        x, y = _anchor(position, size, w, h, margin)
        jx = 0 if horiz == "center" else int(rng.integers(0, max(1, size // 25)))
        jy = int(rng.integers(0, max(1, size // 25)))
        x += jx if horiz == "left" else -jx if horiz == "right" else 0
        y += jy if vert == "top" else -jy
        dx = -1 if horiz == "left" else 1 if horiz == "right" else 0
        dy = -1 if vert == "top" else 1
        while not _clear(lungs, x, y, w, h):  # slide toward the image edge
            nx = min(max(x + dx, margin), size - margin - w)
            ny = min(max(y + dy, margin), size - margin - h)
            if (nx, ny) == (x, y):
                break
            x, y = nx, ny
        if not _clear(lungs, x, y, w, h):
            spot = _search(lungs, position, size, w, h, margin, (x, y))
            if spot is not None:
                x, y = spot
        if _clear(lungs, x, y, w, h):
            break
    region = img[y : y + h, x : x + w]
    if label:
        region[:] = 0.06
    alpha = sprite.astype(np.float32) / 255.0
    region[:] = region * (1 - alpha) + np.float32(value) * alpha
    return Marker(kind, position, target_class, (x, y, x + w, y + h))
