"""Grad-CAM overlays in the film's own geometry: what a person (or a PACS viewer) lays over the
original film, not over the padded square the model saw.

The model reads the film letterboxed to a square (:func:`~cxrguide.data.imaging.fit_square`);
the map and the lung mask come out on that square. :func:`film_overlay` undoes the letterbox
(:func:`~cxrguide.data.imaging.unfit_square`) and draws both over the film decoded at full
resolution, so the result has the film's rows and columns. Where the film was decoded reduced
for the model (``read_image(target=...)``), the map is placed to within one model-input pixel.
"""

from __future__ import annotations

import numpy as np

from cxrguide.attention.cam import draw_contour, heat_overlay
from cxrguide.data.imaging import unfit_square


def film_overlay(
    film: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.45
) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` for a gray ``(H, W)`` film in [0, 1] and its square CAM / mask."""
    height, width = film.shape
    heat_film = np.clip(unfit_square(np.asarray(heat, dtype=np.float32), height, width), 0, 1)
    rgb = heat_overlay(film, heat_film, alpha)
    if mask is not None:
        lungs = unfit_square(np.asarray(mask, dtype=np.float32), height, width, mask=True)
        rgb = draw_contour(rgb, lungs, width=max(1, min(height, width) // 160))
    return rgb
