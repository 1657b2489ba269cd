"""The three classes, in the one order used everywhere (tensors, CSVs, reports)."""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("Normal", "Pneumonia", "COVID-19")
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
SPLITS: tuple[str, ...] = ("train", "val", "test")
