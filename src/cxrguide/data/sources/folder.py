"""``folder``: anyone's films in one subfolder per label (the ImageFolder layout).

``--source folder=PATH`` names the source after the folder (``Kermany-pediatric-CXR``);
``--source folder:NAME=PATH`` names it explicitly. The name is the manifest's ``source``, so
every folder is its own source for the audit and the cross-source bench. A label folder's
name goes through the label map (:mod:`.labelmap`); its files, in any depth of subfolders, are
the films (the decoder judges them: a non-image file is rejected with its reason). There are no
patient ids: ``patient_id`` is the file stem (use a ``table`` source when the data has them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from cxrguide.data.sources import register
from cxrguide.data.sources._csv import IMAGE_EXTENSIONS
from cxrguide.data.sources.base import Rejection, Source, SourceOptions, SourceRecord
from cxrguide.data.sources.labelmap import LabelMap
from cxrguide.errors import SourceLayoutError

FILM_EXTENSIONS = (*IMAGE_EXTENSIONS, ".dcm", ".dicom")


def derived_name(folder: Path) -> str:
    """A source NAME from a folder's name (characters outside ``[A-Za-z0-9._-]`` become ``-``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(folder).resolve().name).strip("-._")
    return name or "source"


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _files(folder: Path) -> Iterator[Path]:
    """Every visible file under ``folder``, in a fixed order (hidden files and folders skipped)."""
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        for name in sorted(files):
            if _visible(name):
                yield Path(here, name)


@register
class FolderSource(Source):
    """ImageFolder: ``PATH/<label>/<film>``; labels through the label map."""

    kind = "folder"
    short_name = "FOLDER"
    expected_layout = "one subfolder per label (ImageFolder), e.g. NORMAL/ and PNEUMONIA/"

    @classmethod
    def open(cls, root: str, name: str, options: SourceOptions) -> Source:
        return cls(root, name=name, label_map=LabelMap(options.label_map))

    def __init__(self, root: str | Path, name: str = "", label_map: LabelMap | None = None) -> None:
        root = Path(root)
        self.label_map = label_map or LabelMap()
        self.name = name or derived_name(root)
        if not root.is_dir():
            raise SourceLayoutError(f"{root}: folder source not found (or not a folder)")
        self.label_dirs = sorted(
            (p for p in root.iterdir() if p.is_dir() and _visible(p.name)), key=lambda p: p.name
        )
        if not self.label_dirs:
            raise SourceLayoutError(
                f"{root}: no label subfolders (a folder source needs {self.expected_layout})"
            )
        if not any(self.label_map.lookup(p.name) for p in self.label_dirs):
            found = ", ".join(p.name for p in self.label_dirs[:6])
            raise SourceLayoutError(
                f"{root}: none of its subfolders ({found}) is a label of the label map; give the "
                "folder that holds the label folders, or map them with --label-map"
            )
        super().__init__(root)

    def looks_valid(self) -> bool:
        return bool(self.label_dirs)

    def scan(self) -> Iterator[SourceRecord | Rejection]:
        for label_dir in self.label_dirs:
            label = self.label_map.lookup(label_dir.name)
            for file in _files(label_dir):
                rel = file.relative_to(self.root).as_posix()
                if label is None:
                    yield Rejection(self.name, rel, self.label_map.why_not(label_dir.name))
                    continue
                yield SourceRecord(
                    source=self.name,
                    root=self.root,
                    path=rel,
                    label=label,
                    patient_id=f"{self.name}:{file.stem}",
                    view="",
                    finding=label_dir.name,
                )
        for file in sorted(self.root.iterdir()):  # films beside the label folders have no label
            if file.is_file() and file.suffix.lower() in FILM_EXTENSIONS:
                yield Rejection(self.name, file.name, "not in a label subfolder")
