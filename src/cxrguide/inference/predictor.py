"""One trained run, ready to label new chest X-ray files (``predict``, ``serve``, benches).

A file goes the way the training images went: :func:`~cxrguide.data.imaging.read_image`
(content-sniffed, size limits before decoding), :func:`~cxrguide.data.imaging.fit_square`
letterboxing to the run's input side, and 8-bit quantisation (the training cache is uint8).
When the run gates on the lungs (``RunInfo.lung_gate``), its lung segmenter
(``RunInfo.lung_model``, or ``lung_model=`` here) segments the same square, the mask is
post-processed and quality-flagged like ``lungs predict`` does, and enters the forward pass.
Ungated runs can still be given a lung model, for the coverage figure and the contour.

Backends (``backend=``, :mod:`cxrguide.inference.backends`): eager fp32, channels-last, bf16, or
ONNX Runtime (``onnx``, ``onnx-int8``) over an export cached per run; ``auto`` picks
:data:`~cxrguide.inference.backends.CPU_DEFAULT` on CPU, fp32 on CUDA. If the export fails under
``auto``, eager fp32 is used with a warning. Grad-CAM always runs on the fp32 PyTorch model.

Files are decoded at the size needed (``target``: memory follows the input side, not the
header); DICOMs that are not radiographs are refused unless ``allow_modality`` names them. A
prediction carries ``warnings`` (lateral view, allowed non-radiograph, lung mask not ``ok``,
``out_of_distribution``) and is ``reliable`` only without any.

The run's reliability statistics (``reliability.safetensors``, :mod:`cxrguide.core.reliability`)
are applied when present: probabilities are calibrated (``calibrated``: temperature or vector
scaling, :meth:`~cxrguide.core.reliability.Reliability.scale`), each film gets
the Mahalanobis ``ood_score`` of its pooled penultimate features (computed in the same forward
pass; the ONNX export returns them as a third output) and ``out_of_distribution`` above the
run's validation threshold. With ``abstain=True`` the label of an unreliable film, or of one
below the run's confidence threshold, is ``abstain``. A run without the statistics predicts as
before (``calibrated: false``, ``ood_score: null``) after one warning line.

Calls are serialised by a lock, so one Predictor can be shared by a threaded server.
"""

from __future__ import annotations

import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrguide.attention.cam import cam_map, cam_overlay
from cxrguide.core.device import resolve_device
from cxrguide.core.reliability import (
    Reliability,
    energy_scores,
    load_reliability,
    softmax,
    warn_missing,
)
from cxrguide.core.runs import RunInfo, run_identifier
from cxrguide.data.imaging import (
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    ImageInfo,
    model_input,
    read_image,
)
from cxrguide.errors import CxrGuideError, ImageReadError
from cxrguide.inference.backends import resolve_backend
from cxrguide.inference.dicom_ids import source_uids
from cxrguide.inference.export import ExportModule, cached_onnx, export_onnx
from cxrguide.inference.film_cam import film_overlay
from cxrguide.inference.onnx_backend import OnnxRunner
from cxrguide.inference.quantize import cached_int8
from cxrguide.inference.results import (  # noqa: F401  (re-exported: the public API)
    IMAGE_SUFFIXES,
    Failure,
    Prediction,
    collect_inputs,
    looks_like_image,
)
from cxrguide.inference.run_summary import public_source, training_summary
from cxrguide.labels import CLASSES
from cxrguide.lungs.metrics import MaskQuality
from cxrguide.lungs.segmenter import FilmSegmenter, explicit_lung_run, find_lung_run
from cxrguide.models.saved import load_run


class Predictor:
    """A loaded run (+ lung segmenter) that labels gray images or files; thread-safe."""

    def __init__(
        self,
        run: str | Path,
        *,
        device: str = "auto",
        backend: str = "auto",
        lung_model: str | Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = MIN_SIDE,
        allow_modality: list[str] | tuple[str, ...] = (),
        allow_for_processing: bool = False,
        decode_timeout_s: float | None = DEFAULT_DEADLINE_S,
        abstain: bool = False,
    ) -> None:
        self.run_dir = Path(run)
        self.abstain = abstain
        self.reliability: Reliability | None = load_reliability(self.run_dir)
        if self.reliability is None:
            warn_missing(self.run_dir)
        self.device = resolve_device(device)
        self.model, self.info = load_run(self.run_dir, self.device)
        self.run_id = run_identifier(self.run_dir)
        self.size = int(self.info.image_size)
        self.max_pixels, self.min_side = max_pixels, min_side
        self.allow_modality = tuple(allow_modality)
        self.allow_for_processing, self.decode_timeout_s = allow_for_processing, decode_timeout_s
        self.segmenter: FilmSegmenter | None = None
        if lung_model:  # named by the user: trusted; model.yaml's only inside the run folder
            self.segmenter = FilmSegmenter(explicit_lung_run(lung_model), self.device)
        elif self.info.lung_model:
            lungs = find_lung_run(self.info.lung_model, self.run_dir)
            self.segmenter = FilmSegmenter(lungs, self.device)
        elif self.info.lung_gate:
            raise CxrGuideError(
                f"{self.run_dir}: the classifier gates on lung masks but names no lung model; "
                "pass --lung-model RUN"
            )
        self.backend = resolve_backend(backend, self.device)
        self._lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._onnx = None
        if self.backend in ("channels_last", "bf16"):
            self.model.to(memory_format=torch.channels_last)
        elif self.backend in ("onnx", "onnx-int8"):
            try:
                self._onnx = self._export_onnx(int8=self.backend == "onnx-int8")
            except Exception as err:  # the exporter and onnxruntime raise many types
                msg = " ".join(str(err).split())[:240]
                if backend != "auto":
                    raise CxrGuideError(f"{self.run_dir}: ONNX export failed ({msg})") from err
                warnings.warn(f"ONNX export failed ({msg}); using eager fp32", stacklevel=2)
                self.close()
                self.backend = "fp32"

    def _export_onnx(self, int8: bool = False) -> Any:
        """The run as ONNX, from the export cache (exported once per run and tool versions);
        ``int8``: its INT8 version, calibrated and checked on the run's validation films."""

        module = ExportModule(
            self.model.cpu(),
            self.size,
            self.info.lung_gate,
            calibration=self.reliability,
            features=True,
        ).eval()
        try:
            path = cached_onnx(module, self.size, identity=f"{self.info!r}|features")
            if path is None:  # no writable cache folder: a private temp file
                self._tmp = tempfile.TemporaryDirectory(prefix="cxrguide-onnx-")
                path = export_onnx(module, Path(self._tmp.name) / "model.onnx", self.size)
            if int8:
                path = cached_int8(path, self.run_dir, self.info)
        finally:
            self.model.to(self.device)
        return OnnxRunner(path, threads=torch.get_num_threads())

    def close(self) -> None:
        if self._tmp is not None:
            self._onnx = None
            self._tmp.cleanup()
            self._tmp = None

    # --- the steps ------------------------------------------------------------------------
    def read(self, path: str | Path) -> tuple[np.ndarray, ImageInfo]:
        """Decode a file (limits checked before decoding) and letterbox it to the input side."""
        return model_input(
            path,
            self.size,
            max_pixels=self.max_pixels,
            min_side=self.min_side,
            allow_modality=self.allow_modality,
            allow_for_processing=self.allow_for_processing,
            deadline_s=self.decode_timeout_s,
        )

    def segment(
        self, squares: np.ndarray, infos: list[ImageInfo]
    ) -> tuple[np.ndarray, list[MaskQuality]] | tuple[None, None]:
        """Post-processed lung masks ``(B, S, S)`` bool and their quality, or (None, None)."""
        if self.segmenter is None:
            return None, None
        return self.segmenter.segment(squares, infos)

    @property
    def temperature(self) -> float | None:
        return None if self.reliability is None else self.reliability.temperature

    @property
    def calibrated(self) -> bool:
        return self.reliability is not None and self.reliability.calibrated

    def probabilities(self, squares: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Softmax ``(B, 3)`` (calibrated when the run has a fit) for ``(B, S, S)`` inputs."""
        return self.outputs(squares, masks)[0]

    def outputs(
        self, squares: np.ndarray, masks: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Probabilities, raw logits and pooled features through the chosen backend (features
        None from an ONNX file exported without them: then no OOD score)."""
        gate = masks if self.info.lung_gate else None
        if self.info.lung_gate and gate is None:
            raise CxrGuideError(f"{self.run_dir}: this run needs lung masks")
        x = np.ascontiguousarray(squares, dtype=np.float32)[:, None]
        m = None if gate is None else np.asarray(gate, dtype=np.float32)[:, None]
        if self._onnx is not None:
            out = self._onnx.outputs(x, m)
            return out["probabilities"], out["logits"], out.get("features")  # None: no OOD
        xt = torch.from_numpy(x).to(self.device)
        mt = None if m is None else torch.from_numpy(m).to(self.device)
        if self.backend in ("channels_last", "bf16"):
            xt = xt.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.backend == "bf16"
        )
        with torch.inference_mode(), autocast:
            logits, feats = self.model.logits_and_features(xt, mt)
        logits = logits.float().cpu().numpy()
        probs = self.reliability.scale(logits) if self.reliability is not None else softmax(logits)
        return probs.astype(np.float32), logits, feats.float().cpu().numpy()

    def predict_arrays(
        self, squares: np.ndarray, infos: list[ImageInfo], sources: list[str]
    ) -> list[Prediction | Failure]:
        """Label letterboxed squares (from :meth:`read`).

        Under a run that blanks the film or gates early features on the lungs
        (``RunInfo.strict_lungs``), an image whose lung mask comes out empty is a
        :class:`Failure` (never classified from an all-zero mask).
        """
        with self._lock:
            masks, flags = self.segment(squares, infos)
            keep = np.arange(len(squares))
            if self.info.strict_lungs and masks is not None:
                keep = np.flatnonzero(np.asarray(masks).reshape(len(masks), -1).any(axis=1))
            if len(keep):
                probs, logits, feats = self.outputs(
                    squares[keep], None if masks is None else masks[keep]
                )
            else:
                probs, logits, feats = (np.zeros((0, len(CLASSES))),) * 3
            rel = self.reliability
            usable = rel is not None and feats is not None and len(keep)
            scores = rel.ood_scores(feats) if usable else None
            energies = energy_scores(logits) if len(keep) else []
        out: list[Prediction | Failure] = [
            Failure(sources[k], "empty lung mask: this run classifies from the lungs only")
            for k in range(len(squares))
        ]
        for i, (k, p) in enumerate(zip(keep.tolist(), probs, strict=True)):
            out[k] = Prediction(
                sources[k],
                CLASSES[int(np.argmax(p))],
                {name: float(p[j]) for j, name in enumerate(CLASSES)},
                None if flags is None else flags[k],
                infos[k],
                squares[k],
                None if masks is None else masks[k],
                uids=source_uids(infos[k]),
                ood_score=None if scores is None else float(scores[i]),
                ood_threshold=None if rel is None else rel.ood_threshold,
                energy_score=float(energies[i]),
                calibrated=self.calibrated,
                confidence_threshold=None if rel is None else rel.confidence_threshold,
                abstain_mode=self.abstain,
            )
        return out

    def predict_file(self, path: str | Path, source: str | None = None) -> Prediction:
        """One file; raises :class:`ImageReadError` when it cannot be read (or, under a
        lungs-only run, its lung mask is empty)."""
        square, info = self.read(path)
        result = self.predict_arrays(square[None], [info], [source or str(path)])[0]
        if isinstance(result, Failure):
            raise ImageReadError(path, result.reason)
        return result

    def predict_files(
        self, paths: Iterable[str | Path], batch_size: int = 16
    ) -> Iterator[Prediction | Failure]:
        """Predictions in input order; unreadable files come out as :class:`Failure`."""
        queue: list[Failure | tuple[str, np.ndarray, ImageInfo]] = []

        def flush() -> Iterator[Prediction | Failure]:
            ok = [q for q in queue if not isinstance(q, Failure)]
            done = iter(
                self.predict_arrays(
                    np.stack([q[1] for q in ok]), [q[2] for q in ok], [q[0] for q in ok]
                )
                if ok
                else []
            )
            for q in queue:
                yield q if isinstance(q, Failure) else next(done)
            queue.clear()

        for path in paths:
            try:
                square, info = self.read(path)
                queue.append((str(path), square, info))
            except ImageReadError as err:
                queue.append(Failure(str(path), err.reason))
            if sum(not isinstance(q, Failure) for q in queue) >= batch_size:
                yield from flush()
        yield from flush()

    def cam(self, prediction: Prediction, method: str = "gradcam", target: int | None = None):
        """RGB uint8 Grad-CAM overlay (heatmap + lung contour) for a prediction."""

        with self._lock:
            return cam_overlay(
                self.model,
                prediction.image,
                prediction.target if target is None else target,
                prediction.mask,
                method,
                gate=self.info.lung_gate,
            )

    def film_cam(
        self, prediction: Prediction, method: str = "gradcam", target: int | None = None
    ) -> np.ndarray:
        """The overlay in the film's own geometry (its rows and columns, letterbox undone),
        drawn over the film re-read at full resolution; see :mod:`cxrguide.inference.film_cam`."""

        with self._lock:
            heat = cam_map(
                self.model,
                prediction.image,
                prediction.target if target is None else target,
                prediction.mask,
                method,
                gate=self.info.lung_gate,
            )
        film, _ = read_image(
            prediction.info.path,
            max_pixels=self.max_pixels,
            min_side=self.min_side,
            allow_modality=self.allow_modality,
        )
        return film_overlay(film, heat, prediction.mask)

    # --- description ------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` reports: run, network, input, lung model, training data."""
        info: RunInfo = self.info
        return {
            "run_id": self.run_id,
            "backbone": info.backbone,
            "stage": info.stage,
            "classes": list(CLASSES),
            "image_size": self.size,
            "lung_gate": info.lung_gate,
            "lung_model": None if self.segmenter is None else self.segmenter.run.resolve().name,
            "attention": list(info.attention),
            "weights_source": public_source(info.weights_source),
            "backend": self.backend,
            "device": str(self.device),
            "calibrated": self.calibrated,
            "temperature": self.temperature,
            "calibration": None if self.reliability is None else self.reliability.method,
            "ood_threshold": None if self.reliability is None else self.reliability.ood_threshold,
            "training_data": training_summary(self.run_dir, info),
        }
