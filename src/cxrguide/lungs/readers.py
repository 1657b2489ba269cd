"""One entry point over the lung readers: pick the reader for a record or a ``--source`` kind."""

from __future__ import annotations

from pathlib import Path

from cxrguide.errors import SourceLayoutError
from cxrguide.lungs.folders import MaskFolderSource, load_folder_mask
from cxrguide.lungs.records import LungMask, LungRecord
from cxrguide.lungs.v7 import V7Source, load_v7_mask


def load_mask(record: LungRecord, height: int, width: int) -> LungMask:
    """Rasterise / read ``record``'s lung annotation at ``height`` x ``width`` pixels."""
    if record.source == "v7":
        return load_v7_mask(record, height, width)
    if record.source == "masks":
        return load_folder_mask(record, height, width)
    raise SourceLayoutError(f"unknown lung source kind {record.source!r} (known: v7, masks)")


def open_lung_source(kind: str, root: str | Path) -> V7Source | MaskFolderSource:
    """The reader for ``--source KIND=PATH`` of ``lungs prepare`` (validates the layout)."""
    kind = kind.strip().lower()
    if kind == "v7":
        return V7Source(root)
    if kind == "masks":
        return MaskFolderSource(root)
    raise SourceLayoutError(f"unknown lung source kind {kind!r} (known: v7, masks)")
