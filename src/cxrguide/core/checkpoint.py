"""Reading checkpoints without running their code: ``torch.load(weights_only=True)`` only.

Run folders are what researchers share, and a pickled checkpoint can run anything when it is
unpickled. Every ``*.pt`` cxrguide reads goes through :func:`load_checkpoint`: tensors, plain
containers and numbers only (no allow-listed classes are needed: RNG states are stored as
tensors and ints by :func:`rng_state`). A file that needs more (an old checkpoint that pickled
NumPy arrays, or a planted payload) is refused with one line naming it, before anything in it
runs.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrguide.errors import CxrGuideError


class UnsafeCheckpointError(CxrGuideError):
    """A checkpoint that cannot be read as plain tensors and numbers."""


def load_checkpoint(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a refused or unreadable file -> one line."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        why = next((s.strip() for s in first if "GLOBAL" in s or "Unsupported" in s), "")
        raise UnsafeCheckpointError(
            f"{path}: refused: it holds more than tensors and numbers, and loading it could run "
            f"code (weights_only=True{'; ' + why[:120] if why else ''}); retrain or re-save it "
            "with this version of cxrguide"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:  # truncated zip, not a torch file
        msg = " ".join(str(err).split())[:160]
        raise CxrGuideError(f"{path}: not a readable checkpoint ({msg})") from None


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and ints: loadable with weights_only."""
    version, words, gauss = random.getstate()
    key, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(words, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "key": str(key),
            "state": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    keys = npy["state"].numpy().astype(np.uint32)
    np.random.set_state((npy["key"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
