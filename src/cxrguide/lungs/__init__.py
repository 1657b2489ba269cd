"""Lung segmentation in one package: readers, `lungs prepare`, the U-Net, training, prediction, metrics.

- :mod:`.records`, :mod:`.v7`, :mod:`.folders`, :mod:`.readers`: V7/Darwin polygon annotations and
  image + mask folders -> :class:`LungRecord` (paths only) -> :class:`LungMask` at the image's size.
- :mod:`.prepare`: ``lungs prepare`` caches images and masks side by side.
- :mod:`.unet`: the segmenter (MONAI BasicUNet; smp optional) and its loss.
- :mod:`.segmenter`: a trained run loaded and run (the one mask rule), what train and predict share.
- :mod:`.train`: ``lungs train`` / ``lungs evaluate``; :mod:`.predict`: masks for a prepared set
  or new files; :mod:`.metrics`: post-processing, quality flags, Dice, IoU, HD95.

Classification training, inference and serving use the public functions named here.
"""

from __future__ import annotations

from cxrguide.lungs.readers import load_mask, open_lung_source
from cxrguide.lungs.records import LEFT, LUNG, RIGHT, LungMask, LungRecord, lung_cache_path

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
