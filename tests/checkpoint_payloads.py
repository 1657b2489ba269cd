"""A planted pickle payload for the "opening a run folder never runs code" tests.

:func:`plant` rewrites a checkpoint with an object whose ``__reduce__`` creates a marker file:
any ``torch.load(weights_only=False)`` of it creates the marker (:func:`payload_works` shows
it), so a test that finds no marker after a command proves the command never unpickled it.
"""

from __future__ import annotations

from pathlib import Path

import torch


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # runs at unpickling time: creates the marker


def plant(checkpoint: Path, marker: Path) -> Path:
    """The checkpoint's own content (if any) plus the payload, saved over it."""
    state = torch.load(checkpoint, weights_only=True) if checkpoint.is_file() else {}
    state = state if isinstance(state, dict) else {"model": state}
    torch.save({**state, "note": Payload(marker)}, checkpoint)
    return checkpoint


def payload_works(checkpoint: Path, marker: Path) -> bool:
    """The planted file really runs code when unpickled the old way (then cleans up)."""
    torch.load(checkpoint, weights_only=False)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran
