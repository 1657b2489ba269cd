"""`cxrguide export RUN --format onnx|torchscript`: a run's classifier as one portable file.

The exported graph takes what :class:`~cxrguide.inference.predictor.Predictor` feeds the model:
``image`` ``(B, 1, S, S)`` float32 gray in [0, 1] at the run's input size (letterboxed with
:func:`~cxrguide.data.imaging.fit_square`), plus ``lung_mask`` ``(B, 1, S, S)`` in {0, 1} when
the run takes lung masks (``RunInfo.lung_gate``: the study's gate on the last map, or the film
blanked / the early feature maps gated outside the dilated lungs, ``RunInfo.lung_inputs``). It
returns ``probabilities`` (softmax, class order
:data:`~cxrguide.labels.CLASSES`) and ``logits``. The batch axis is dynamic; the side is fixed.

The last-map gate goes through :func:`~cxrguide.models.grid.mask_to_grid`, the model's own
rule, written so that it exports for every size (average pooling where the grid divides the
side, two constant matrix products where it does not: Inception at 299 px -> 8x8).

The run's calibration (``reliability.safetensors``, :mod:`cxrguide.core.reliability`) travels in
the graph: ``probabilities = softmax(w * logits + b)`` with ``w``, ``b`` constant buffers
(temperature: ``w = 1 / T``, ``b = 0``; vector scaling: per class), ``logits`` are the network's
raw outputs; the metadata properties ``calibration``, ``calibration_scale``, ``calibration_bias``
and ``temperature`` state them (``none`` / "1.0" for a run without). The predictor's own
export also returns ``features``, the pooled penultimate features its OOD score is computed on.

Run facts (classes, input size, backbone, run id, gate) travel inside the file: ONNX metadata
properties, or ``cxrguide.json`` among a TorchScript archive's extra files.

ONNX comes from the ``torch.export`` based exporter (``dynamo=True``, opset >= 18); every zoo
model exports with it, so there is no fallback to the deprecated TorchScript based one. It is
~20x slower than that one was (``bench/onnx_export.py``; figures in the README), hence
:func:`cached_onnx` for the predictor.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrguide.core.reliability import load_reliability, warn_missing
from cxrguide.core.runs import run_identifier
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_path, atomic_write_text, user_cache_dir
from cxrguide.inference.onnx_backend import OnnxRunner
from cxrguide.inference.quantize import quantize_checked, validation_feeds
from cxrguide.labels import CLASSES
from cxrguide.models.classifier import CxrClassifier
from cxrguide.models.grid import mask_to_grid

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 18  # the lowest the torch.export based exporter writes natively
PARITY_TOLERANCE = 1e-4
META_FILE = "cxrguide.json"
CACHE_ENV = "CXRGUIDE_CACHE_DIR"


class ExportModule(nn.Module):
    """The classifier with softmax on top and an export-friendly lung gate."""

    def __init__(
        self,
        model: CxrClassifier,
        image_size: int,
        lung_gate: bool,
        *,
        calibration: Any = None,
        features: bool = False,
    ) -> None:
        """``calibration``: the run's :class:`~cxrguide.core.reliability.Reliability` (or
        None): its affine map ``w * logits + b`` (temperature or vector scaling) goes in."""
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.lung_gate = lung_gate
        self.with_features = features  # a third output: pooled features (the predictor's OOD)
        w, b = (
            (np.ones(len(CLASSES)), np.zeros(len(CLASSES)))
            if calibration is None
            else calibration.affine()
        )
        self.register_buffer("cal_scale", torch.tensor(w, dtype=torch.float32))
        self.register_buffer("cal_bias", torch.tensor(b, dtype=torch.float32))

    def forward(
        self, image: torch.Tensor, lung_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        if not self.lung_gate:
            features = self.model.forward_features(image)
        else:
            if lung_mask is None:
                raise ValueError("this model gates on the lungs: pass lung_mask (B, 1, S, S)")
            # input blanking / early gates as the model does them; the last gate exportable
            features = self.model.lung_features(image, lung_mask, last=False)
            if "last" in self.model.lung_inputs:
                features = features * mask_to_grid(
                    lung_mask.to(features.dtype), features.shape[-2:]
                )
        logits = self.model.head(self.model.feature_tap(features))
        probs = torch.softmax(logits * self.cal_scale + self.cal_bias, dim=1)
        if self.with_features:
            return probs, logits, features.mean(dim=(2, 3))
        return probs, logits


def example_inputs(
    image_size: int, lung_gate: bool, batch: int = 2, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Images in [0, 1] and, for a gated run, elliptic 0/1 lung masks (reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 1, image_size, image_size, generator=gen)
    if not lung_gate:
        return (image,)
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, image_size), torch.linspace(-1, 1, image_size), indexing="ij"
    )
    lungs = ((xx.abs() - 0.45) / 0.3) ** 2 + (yy / 0.7) ** 2 <= 1
    mask = lungs.float().expand(batch, 1, -1, -1).clone()
    return image, mask


def run_metadata(info: Any, run_id: str, rel: Any = None) -> dict[str, str]:
    """String facts stored inside the exported file (``rel``: the run's reliability or None)."""
    temperature = None if rel is None else rel.temperature
    w, b = (None, None) if rel is None else rel.affine()
    method = (rel.method if rel is not None else None) or "none"
    return {
        "calibration": method,
        "calibration_scale": "" if w is None else ",".join(repr(float(v)) for v in w),
        "calibration_bias": "" if b is None else ",".join(repr(float(v)) for v in b),
        "classes": ",".join(CLASSES),
        "image_size": str(info.image_size),
        "backbone": info.backbone,
        "stage": str(info.stage),
        "run_id": run_id,
        "lung_gate": "1" if info.lung_gate else "0",
        "input": "gray [0,1] letterboxed",
        "outputs": "probabilities,logits",
        "temperature": repr(float(temperature or 1.0)),
        "probabilities": "softmax(logits * calibration_scale + calibration_bias)",
    }


def export_onnx(
    module: ExportModule,
    path: Path,
    image_size: int,
    *,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``module`` as ONNX (dynamic batch) with ``metadata`` properties.

    Uses the ``torch.export`` based exporter (``dynamo=True``, needs ``onnxscript``); the
    TorchScript one is deprecated. Weights are stored inside the one file.
    """
    import onnx

    inputs = example_inputs(image_size, module.lung_gate)
    names = ["image", "lung_mask"][: len(inputs)]
    batch = torch.export.Dim("batch", min=1)
    shapes = {name: {0: batch} for name in names}  # keyed by ExportModule.forward's arguments
    outputs = ["probabilities", "logits"] + (["features"] if module.with_features else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # axis-renaming and deprecation chatter
        program = torch.onnx.export(
            module.eval(),
            inputs,
            input_names=names,
            output_names=outputs,
            dynamic_shapes=shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def export_cache_dir() -> Path:
    """Where exported ONNX files are kept: ``$CXRGUIDE_CACHE_DIR/onnx``, else the user cache
    (``$XDG_CACHE_HOME/cxrguide/onnx``, by default ``~/.cache/cxrguide/onnx``), as for bodies."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else user_cache_dir()) / "onnx"


def export_key(module: ExportModule, image_size: int, opset: int, identity: str = "") -> str:
    """Hash of everything the exported graph depends on: weights, side, gate, run facts, tools."""
    import onnxscript

    digest = hashlib.sha256(
        f"{torch.__version__}|{onnxscript.__version__}|{opset}|{image_size}|{module.lung_gate}|"
        f"{sorted(module.model.lung_inputs)}|{identity}".encode()
    )
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def cached_onnx(
    module: ExportModule,
    image_size: int,
    *,
    identity: str = "",
    opset: int = DEFAULT_OPSET,
    folder: Path | None = None,
) -> Path | None:
    """``module`` as ONNX from the per-user cache, exported on a miss; None if it is unwritable.

    Why: the torch.export based exporter needs ~30 s for MobileNet V2 at 224 px where the
    TorchScript one needed ~1.5 s (busy 2-core CPU), and the predictor's ONNX backend would pay
    it at every start.
    The file is written to a temp name and renamed, so a killed export is never reused; its
    SHA-256 goes to a ``.sha256`` sidecar written after it, and a hit whose bytes do not match
    (a truncated copy, a file swapped in the cache) is exported afresh, never loaded.
    """

    folder = folder or export_cache_dir()
    path = folder / f"{export_key(module, image_size, opset, identity)}.onnx"
    sidecar = path.with_suffix(".sha256")
    if path.is_file() and sidecar.is_file():
        try:
            if sidecar.read_text().strip() == _file_sha256(path):
                return path
        except OSError:
            pass
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            export_onnx(module, tmp, image_size, opset=opset)
            digest = _file_sha256(tmp)
        atomic_write_text(sidecar, digest + "\n")
    except OSError:
        return None
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_torchscript(
    module: ExportModule, path: Path, image_size: int, *, metadata: dict[str, str] | None = None
) -> Path:
    """Trace ``module`` to TorchScript; ``metadata`` goes into ``cxrguide.json``."""
    inputs = example_inputs(image_size, module.lung_gate)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the TorchScript deprecation notice
        traced = torch.jit.trace(module.eval(), inputs, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={META_FILE: json.dumps(metadata or {})})
    return path


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    inputs: list[str]
    max_abs_diff: float | None  # probabilities vs PyTorch on the check inputs; None if skipped
    agreement: float | None = None  # INT8 only: top-1 agreement with fp32 on validation films


def parity(module: ExportModule, path: Path, fmt: str, image_size: int, seed: int = 1) -> float:
    """Largest absolute probability difference between the file and the PyTorch classifier.

    The reference is the classifier's own ``forward`` (with its area-interpolated gate), not
    :class:`ExportModule`, so the check also covers the rebuilt gate; its logits divided by the
    exported calibration (``w * logits + b``), so it covers that too. Batch of 3.
    """
    inputs = example_inputs(image_size, module.lung_gate, batch=3, seed=seed)
    with torch.no_grad():
        logits = module.model(*inputs) * module.cal_scale + module.cal_bias
        reference = torch.softmax(logits, dim=1).cpu().numpy()
    if fmt == "onnx":
        runner = OnnxRunner(path)
        got = runner(inputs[0].numpy(), inputs[1].numpy() if len(inputs) > 1 else None)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            got = loaded(*inputs)[0].numpy()
    return float(np.abs(got - reference).max())


def export_run(
    run: str | Path,
    fmt: str,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    int8: bool = False,
    calibration_films: int = 64,
    min_agreement: float = 0.99,
    seed: int = 0,
    int8_reduce_range: bool = True,
) -> ExportResult:
    """Export a run folder's classifier; with ``check`` fail unless parity is within 1e-4.

    ``int8``: the checked fp32 graph statically quantized on the run's validation films
    (:mod:`cxrguide.inference.quantize`; ``int8_reduce_range``: 7-bit weights), refused below
    ``min_agreement`` top-1 agreement.
    """
    from cxrguide.models.saved import load_run

    if fmt not in FORMATS:
        raise CxrGuideError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise CxrGuideError(f"{out}: is a folder; give a file name for --out")
    if not out.parent.is_dir():
        raise CxrGuideError(f"{out.parent}: output folder does not exist")
    if int8 and fmt != "onnx":
        raise CxrGuideError("int8: only with --format onnx")
    model, info = load_run(run, "cpu")
    rel = load_reliability(run)
    if rel is None:
        warn_missing(run)
    module = ExportModule(model, info.image_size, info.lung_gate, calibration=rel).eval()
    meta = run_metadata(info, run_identifier(run), rel)
    if int8:
        return _export_int8(
            module,
            info,
            run,
            out,
            meta,
            opset,
            calibration_films,
            min_agreement,
            seed,
            int8_reduce_range,
        )
    with atomic_path(out) as tmp:  # a file that fails its parity check never reaches --out
        if fmt == "onnx":
            export_onnx(module, tmp, info.image_size, opset=opset, metadata=meta)
        else:
            export_torchscript(module, tmp, info.image_size, metadata=meta)
        diff = parity(module, tmp, fmt, info.image_size) if check else None
        if diff is not None and diff > PARITY_TOLERANCE:
            raise CxrGuideError(
                f"{out}: exported {fmt} differs from PyTorch by {diff:.2e} (> "
                f"{PARITY_TOLERANCE:g}) in probabilities; the file is not trustworthy and was "
                "not written"
            )
    names = ["image", "lung_mask"] if info.lung_gate else ["image"]
    return ExportResult(out, fmt, names, diff)


def _export_int8(
    module: ExportModule,
    info: Any,
    run: str | Path,
    out: Path,
    meta: dict[str, str],
    opset: int,
    calibration_films: int,
    min_agreement: float,
    seed: int,
    reduce_range: bool,
) -> ExportResult:
    """fp32 export (parity-checked) in a temp folder, then the checked INT8 file at ``out``."""

    calibration, check = validation_feeds(run, info, calibration_films, seed)
    with tempfile.TemporaryDirectory(prefix="cxrguide-export-") as tmp:
        fp32 = export_onnx(module, Path(tmp) / "fp32.onnx", info.image_size, opset=opset)
        diff = parity(module, fp32, "onnx", info.image_size)
        if diff > PARITY_TOLERANCE:
            raise CxrGuideError(
                f"{run}: the fp32 ONNX graph differs from PyTorch by {diff:.2e}; not quantizing it"
            )
        result = quantize_checked(
            fp32,
            out,
            calibration,
            check,
            min_agreement=min_agreement,
            metadata=meta,
            reduce_range=reduce_range,
        )
    names = ["image", "lung_mask"] if info.lung_gate else ["image"]
    return ExportResult(out, "onnx-int8", names, result.max_abs_diff, result.agreement)
