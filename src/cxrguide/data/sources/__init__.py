"""One module per public source; :data:`SOURCES` maps the CLI KIND name to its class."""

from __future__ import annotations

from cxrguide.data.sources.base import Rejection, Source, SourceRecord
from cxrguide.errors import SourceLayoutError

SOURCES: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    SOURCES[cls.kind] = cls
    return cls


def open_source(kind: str, root: str) -> Source:
    """Instantiate the source ``kind`` on ``root`` (validates the layout)."""
    _load_all()
    if kind not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        raise SourceLayoutError(f"unknown source kind {kind!r} (known: {known})")
    return SOURCES[kind](root)


def _load_all() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["SOURCES", "Rejection", "Source", "SourceRecord", "open_source", "register"]
