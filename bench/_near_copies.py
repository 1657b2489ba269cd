"""Near-copies of a film as re-publishers make them, and the real sample films to copy.

Shared by ``bench/near_duplicates.py`` (recall over every sample film) and the tests of
:mod:`cxrguide.data.manifest` (a subset), so both measure the same kinds of copy.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# (left, top, right, bottom) crop boxes as fractions of the film: 3% and 5% crops, centred and
# from one corner, and one uneven crop, each resized back to the film's size.
CROPS = {
    "crop3": (0.015, 0.015, 0.985, 0.985),
    "crop5": (0.025, 0.025, 0.975, 0.975),
    "crop3_corner": (0.03, 0.03, 1.0, 1.0),
    "crop5_corner": (0.05, 0.05, 1.0, 1.0),
    "crop_uneven": (0.04, 0.01, 0.99, 0.965),  # off any regular grid: 4% / 1% / 1% / 3.5%
}
KINDS = ("half", "jpeg", "half_jpeg", *CROPS, "gamma", "contrast", "16bit")


def _jpeg(im: Image.Image, quality: int = 70) -> np.ndarray:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf)) / 255.0


def near_copies(img: np.ndarray) -> dict[str, np.ndarray]:
    """Every kind in :data:`KINDS` of copy of ``img`` (gray, float in [0, 1]), as floats in [0, 1]:
    resized to half, re-encoded as JPEG q70 (and both), cropped, gamma 0.7, linear contrast, and
    quantised to 16 bits."""
    u8 = (img * 255).round().astype(np.uint8)
    h, w = u8.shape
    im = Image.fromarray(u8)
    half = im.resize((max(w // 2, 1), max(h // 2, 1)), Image.Resampling.LANCZOS)
    out = {"half": np.asarray(half) / 255.0, "jpeg": _jpeg(im), "half_jpeg": _jpeg(half)}
    for name, frac in CROPS.items():
        box = tuple(int(round(f * s)) for f, s in zip(frac, (w, h, w, h), strict=True))
        out[name] = np.asarray(im.crop(box).resize((w, h), Image.Resampling.BICUBIC)) / 255.0
    out["gamma"] = img**0.7
    out["contrast"] = np.clip((img - 0.1) * 1.25, 0, 1)
    out["16bit"] = (img * 65535).round().astype(np.uint16) / 65535.0  # as the reader gives it
    return out


def sample_films(shared: Path, every: int = 1) -> list[Path]:
    """Every ``every``-th film of the real samples (PNG / JPEG; not the V7 copies or masks)."""
    files = sorted(
        p
        for p in shared.rglob("*")
        if p.suffix.lower() in (".png", ".jpg", ".jpeg")
        and "masks" not in p.parts
        and "V7" not in p.parts
    )
    return files[::every]
