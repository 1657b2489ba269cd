"""ONNX Runtime inference over a file written by ``cxrguide export --format onnx``.

Used by the predictor's ``onnx`` backend, the export parity check and ``bench/inference.py``.
It speaks the exported contract only (inputs ``image`` and optionally ``lung_mask``, output
``probabilities``); external ONNX classifiers with other layouts are
:mod:`cxrguide.evaluation.external_onnx`'s business.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrguide.core.onnx_session import open_session
from cxrguide.errors import CxrGuideError


class OnnxRunner:
    """Probabilities ``(B, 3)`` from gray images ``(B, 1, S, S)`` [+ lung masks] by onnxruntime."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = Path(path)
        self.session = open_session(self.path, threads)
        names = [i.name for i in self.session.get_inputs()]
        if "image" not in names or not set(names) <= {"image", "lung_mask"}:
            raise CxrGuideError(
                f"{self.path}: inputs {names} are not those of 'cxrguide export' "
                "(image[, lung_mask])"
            )
        if "probabilities" not in [o.name for o in self.session.get_outputs()]:
            raise CxrGuideError(f"{self.path}: no 'probabilities' output (not a cxrguide export)")
        self.needs_mask = "lung_mask" in names
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        shape = self.session.get_inputs()[names.index("image")].shape
        self.image_size = shape[-1] if isinstance(shape[-1], int) else None

    def _feed(self, images: np.ndarray, lung_mask: np.ndarray | None) -> dict[str, np.ndarray]:
        feed = {"image": np.ascontiguousarray(images, dtype=np.float32)}
        if self.needs_mask:
            if lung_mask is None:
                raise CxrGuideError(f"{self.path}: this model gates on the lungs; give lung_mask")
            feed["lung_mask"] = np.ascontiguousarray(lung_mask, dtype=np.float32)
        return feed

    def __call__(self, images: np.ndarray, lung_mask: np.ndarray | None = None) -> np.ndarray:
        feed = self._feed(images, lung_mask)
        return np.asarray(self.session.run(["probabilities"], feed)[0], dtype=np.float32)

    def outputs(
        self, images: np.ndarray, lung_mask: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Every output by name (``probabilities``, ``logits`` and, when exported, ``features``)."""
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, self._feed(images, lung_mask))
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, values, strict=True)}
