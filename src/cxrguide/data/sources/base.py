"""What every public source module provides: find its files, read its metadata, map its labels.

A source module knows one publisher's download layout. It never decodes pixels (``prepare`` does
that in parallel with :mod:`cxrguide.data.imaging`); it yields one :class:`SourceRecord` per
metadata row it can map to a class, and one :class:`Rejection` per row it drops (wrong view,
unmapped label, missing file), so nothing disappears without a line in ``rejected.csv``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cxrguide.errors import ConfigError, SourceLayoutError

FRONTAL_VIEWS = ("PA", "AP")


@dataclass(frozen=True)
class SourceRecord:
    """One usable image as its source describes it (pixels not read yet)."""

    source: str  # the source's NAME: its KIND for the study's five ("ieee8023"), else chosen
    root: Path  # the source folder given on the command line
    path: str  # POSIX path relative to ``root``
    label: str  # one of cxrguide.labels.CLASSES
    patient_id: str  # source-prefixed patient id; the file stem when the source has none
    view: str  # "PA", "AP" or "" when the source does not record it
    finding: str = ""  # the source's own label text, kept for audit
    site: str = ""  # acquisition site for stratification; defaults to ``source``
    fixed_split: str = ""  # a split the source imposes (synthetic ``shortcut_test``), else ""

    @property
    def file(self) -> Path:
        return self.root / self.path

    @property
    def stratum_site(self) -> str:
        return self.site or self.source


@dataclass(frozen=True)
class Rejection:
    """A metadata row or file that will not enter the manifest, and why."""

    source: str
    path: str  # relative to the source root (or the metadata row's file name)
    reason: str


@dataclass(frozen=True)
class SourceOptions:
    """Prepare's settings some source kinds take (the registry passes them to `Source.open`)."""

    radiography_classes: tuple[str, ...] = ("COVID",)
    #: the user's entries, laid over the default map
    label_map: Mapping[str, str | None] = field(default_factory=dict)


class Source(ABC):
    """One public dataset in its publisher's layout."""

    kind: ClassVar[str]  # CLI name: ieee8023, actualmed, figure1, radiography, rsna, synthetic
    short_name: ClassVar[str]  # the study's name: CCXRD, ACCXRD, FCCXRD, CRD, RSNAPDD
    expected_layout: ClassVar[str]  # one line shown when the folder does not match
    name: str  # the manifest's ``source`` value: the kind, unless the source takes a NAME

    @classmethod
    def open(cls, root: str, name: str, options: SourceOptions) -> Source:
        """The source for ``--source KIND[:NAME]=root``; kinds with options or names override."""
        if name:
            raise ConfigError(f"source: {cls.kind} takes no NAME (give {cls.kind}=PATH)")
        return cls(root)

    def __init__(self, root: str | Path) -> None:
        if not getattr(self, "name", ""):
            self.name = self.kind
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceLayoutError(f"{self.root}: {self.kind} folder not found")
        if not self.looks_valid():
            raise SourceLayoutError(
                f"{self.root}: does not look like {self.kind} (expected {self.expected_layout})"
            )

    @abstractmethod
    def looks_valid(self) -> bool:
        """Cheap layout check (expected files/folders exist)."""

    @abstractmethod
    def scan(self) -> Iterator[SourceRecord | Rejection]:
        """Yield every metadata row as a record or a rejection; check file existence only."""
