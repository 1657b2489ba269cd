"""Which backend runs a :class:`~cxrguide.inference.predictor.Predictor`'s forward pass.

Backends (``backend=``): ``fp32`` eager; ``channels_last`` (fp32, NHWC weights); ``bf16``
(channels-last + bfloat16 autocast); ``onnx`` (run by ONNX Runtime; the run is exported once,
~30 s for MobileNet V2 at 224 px, into the user cache (``$XDG_CACHE_HOME/cxrguide/onnx``,
``~/.cache/cxrguide/onnx``) or ``$CXRGUIDE_CACHE_DIR/onnx``, or a private temp file when that is not
writable); ``auto`` picks :data:`CPU_DEFAULT` on CPU, fp32 on CUDA. ONNX won in
``bench/inference.py`` (figures in its docstring): 100 % top-1 agreement and probabilities within
3e-7 of eager fp32, 2.2x eager's throughput and 2.8x its batch-1 speed over the ten backbones
with one thread, and the fastest path everywhere with two threads on the busy shared CPU (bf16
had the best one-thread throughput, 3.1x, but drifts by up to 2e-3 and gains less at batch 1).
If the export fails under ``auto``, eager fp32 is used with a warning.
"""

from __future__ import annotations

from typing import get_args

import torch

from cxrguide.config.inference import Backend
from cxrguide.errors import CxrGuideError

BACKENDS: tuple[str, ...] = get_args(Backend)  # the config's names, in its order
CPU_DEFAULT = "onnx"  # chosen with bench/inference.py (see the module docstring)


def bf16_supported() -> bool:
    """Native bfloat16 matmuls on this CPU (AVX512-BF16 / AMX); without them bf16 is slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise CxrGuideError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "fp32"
    if CPU_DEFAULT == "bf16" and not bf16_supported():
        return "channels_last"
    return CPU_DEFAULT
