"""Lung segmentation data: V7/Darwin polygon annotations, image + mask folders, `lungs prepare`.

Both readers yield :class:`LungRecord` (an image and where its lung outline comes from) or a
:class:`~cxrguide.data.sources.base.Rejection`, and :func:`load_mask` turns a record into a
:class:`LungMask` at the image's own size. ``lungs prepare`` caches images and masks side by
side so the U-Net never decodes an original twice.
"""

from __future__ import annotations

from cxrguide.data.lungs.records import (
    LEFT,
    LUNG,
    RIGHT,
    LungMask,
    LungRecord,
    load_mask,
    lung_cache_path,
    open_lung_source,
)

__all__ = [
    "LEFT",
    "LUNG",
    "RIGHT",
    "LungMask",
    "LungRecord",
    "load_mask",
    "lung_cache_path",
    "open_lung_source",
]
