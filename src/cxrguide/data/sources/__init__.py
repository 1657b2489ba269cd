"""One module per public source; :data:`SOURCES` maps the CLI KIND name to its class.

The registry is the only way a ``--source KIND[:NAME]=PATH`` becomes a :class:`Source`:
:func:`open_sources` parses the specs (:func:`cxrguide.config.data.parse_source_spec`) and each
kind's :meth:`Source.open` takes what it needs (a NAME, the label map, radiography's classes).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from pathlib import Path

from cxrguide.config.data import parse_source_spec
from cxrguide.data.sources.base import Rejection, Source, SourceOptions, SourceRecord
from cxrguide.errors import ConfigError, SourceLayoutError

SOURCES: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    SOURCES[cls.kind] = cls
    return cls


def open_source(
    kind: str, root: str, *, name: str = "", options: SourceOptions | None = None
) -> Source:
    """Instantiate the source ``kind`` on ``root`` (validates the layout)."""
    _load_all()
    kind = kind.strip().lower()
    if kind not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        raise SourceLayoutError(f"unknown source kind {kind!r} (known: {known})")
    return SOURCES[kind].open(root, name, options or SourceOptions())


def open_sources(specs: Iterable[str], options: SourceOptions | None = None) -> list[Source]:
    """Every ``--source`` spec opened; a path or a source name given twice is refused, and so is
    a NAME that would pass for one of the registered kinds (quota, survivor order and the study
    tables key on those)."""
    specs = list(specs)
    if not specs:
        raise ConfigError("source: give at least one --source KIND=PATH")
    _load_all()
    sources: list[Source] = []
    by_path: dict[Path, str] = {}
    by_name: dict[str, str] = {}
    for text in specs:
        spec = parse_source_spec(text)
        path = Path(spec.path).expanduser().resolve()
        if path in by_path:
            raise ConfigError(f"source: {spec.path} is given twice ({by_path[path]} and {text})")
        by_path[path] = text
        src = open_source(spec.kind, spec.path, name=spec.name, options=options)
        if src.name != src.kind and src.name.casefold() in {k.casefold() for k in SOURCES}:
            raise ConfigError(
                f"source: name {src.name!r} of {text} is a source kind's; "
                f"choose another with {spec.kind}:NAME=PATH"
            )
        if src.name.casefold() in by_name:
            raise ConfigError(
                f"source: name {src.name!r} is given twice ({by_name[src.name.casefold()]} "
                f"and {text}); name one with {spec.kind}:NAME=PATH"
            )
        by_name[src.name.casefold()] = text
        sources.append(src)
    return sources


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = [
    "SOURCES",
    "Rejection",
    "Source",
    "SourceOptions",
    "SourceRecord",
    "open_source",
    "open_sources",
    "register",
]
