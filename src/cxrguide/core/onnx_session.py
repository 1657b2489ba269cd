"""The one ONNX Runtime session set-up, shared by inference (our exports) and evaluation
(external classifiers), which must not import each other.

Errors only on stderr (no optimiser chatter), all graph optimisations, CUDA first when
onnxruntime-gpu can use it, else CPU; a missing or broken file is a one-line
:class:`~cxrguide.errors.CxrGuideError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrguide.errors import CxrGuideError

PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def open_session(path: str | Path, threads: int = 0) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path``; ``threads > 0`` caps intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise CxrGuideError("ONNX inference needs onnxruntime: pip install onnxruntime") from err
    path = Path(path)
    if not path.is_file():
        raise CxrGuideError(f"{path}: no such ONNX model file")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = [p for p in PROVIDERS if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # InvalidProtobuf, InvalidGraph, ... (pybind types)
        msg = " ".join(str(err).split())[:200]
        raise CxrGuideError(f"{path}: not a valid ONNX model ({msg})") from err
