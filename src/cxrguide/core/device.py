"""Device choice, shared by training, evaluation, inference and serving.

``auto`` is CUDA when there is one (the torchrun rank's own GPU under DDP), else the CPU.
"""

from __future__ import annotations

import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
