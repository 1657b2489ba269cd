"""COVID-19 Radiography Database (Kaggle; the study's CRD): one folder per class.

Point it at the extracted ``COVID-19_Radiography_Dataset/`` (``COVID/``, ``Normal/``,
``Lung_Opacity/``, ``Viral Pneumonia/``; the 2021 release puts the PNGs in ``<Class>/images/``
beside ``<Class>/masks/``), at the older ``COVID-19 Radiography Database/`` (``COVID-19/``,
``NORMAL/``, ``Viral Pneumonia/``), or at a folder holding only one of those.

The study takes only the COVID folder (Normal and Lung_Opacity re-publish RSNA and Kermany
images, i.e. duplicates of other sources); other folders only when asked for through
``classes``. Viral Pneumonia and Lung_Opacity map to Pneumonia. Images of the folders not
selected are listed as rejections ("class folder not selected (--radiography-classes)").

The COVID folder also re-publishes ieee8023 images. When ``<Class>.metadata.xlsx`` (columns
``FILE NAME, FORMAT, SIZE, URL``) is present, images whose URL points at the ieee8023 repository
are rejected here. Without the workbook (some mirrors omit it) nothing is dropped here and
prepare's exact/near-duplicate detection across sources has to catch them. The folder is the
source of truth: workbook rows without an image are ignored. The set has no patient ids or
views, so ``patient_id`` is the file stem and ``view`` is "".
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from cxrguide.data.sources import register
from cxrguide.data.sources._csv import IMAGE_EXTENSIONS, FileIndex, find_dataset_root
from cxrguide.data.sources.base import Rejection, Source, SourceOptions, SourceRecord
from cxrguide.errors import ConfigError, CxrGuideError, SourceLayoutError

#: Canonical class name -> (folder names used by the releases, label).
CLASS_FOLDERS: dict[str, tuple[tuple[str, ...], str]] = {
    "COVID": (("COVID", "COVID-19"), "COVID-19"),
    "Normal": (("Normal",), "Normal"),
    "Viral Pneumonia": (("Viral Pneumonia",), "Pneumonia"),
    "Lung_Opacity": (("Lung_Opacity", "Lung Opacity"), "Pneumonia"),
}
IEEE8023_URL_MARKERS = ("ieee8023", "covid-chestxray-dataset")
NOT_SELECTED = "class folder not selected (--radiography-classes)"


def canonical_class(name: str) -> str:
    """``covid-19`` / ``COVID`` -> ``COVID``; raises ConfigError for an unknown class name."""
    key = name.strip().casefold()
    for canon, (folders, _) in CLASS_FOLDERS.items():
        if key == canon.casefold() or key in (f.casefold() for f in folders):
            return canon
    known = ", ".join(CLASS_FOLDERS)
    raise ConfigError(f"radiography classes: unknown class {name!r} (known: {known})")


def _subdirs(folder: Path) -> dict[str, Path]:
    try:
        return {p.name.casefold(): p for p in folder.iterdir() if p.is_dir()}
    except OSError:
        return {}


def _class_dir(root: Path, canon: str) -> Path | None:
    dirs = _subdirs(root)
    for name in CLASS_FOLDERS[canon][0]:
        if name.casefold() in dirs:
            return dirs[name.casefold()]
    return None


def _looks_like(folder: Path) -> bool:
    return any(_class_dir(folder, canon) is not None for canon in CLASS_FOLDERS)


def _key(name: str) -> str:
    """File-name key shared by the folder and the workbook (stem, case and spaces ignored)."""
    stem = name.strip()
    if stem.lower().endswith(IMAGE_EXTENSIONS):
        stem = stem.rsplit(".", 1)[0]
    return "".join(stem.split()).casefold()


def ieee8023_names(workbook: Path) -> set[str]:
    """Keys (see :func:`_key`) of the images whose URL is the ieee8023 repository."""
    try:
        import openpyxl  # noqa: F401  (pandas needs it for .xlsx)
    except ImportError as err:
        raise CxrGuideError(
            f"{workbook}: reading it needs openpyxl (pip install openpyxl)"
        ) from err
    try:
        df = pd.read_excel(workbook, dtype=str, engine="openpyxl").fillna("")
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as err:
        detail = " ".join(str(err).split())
        raise SourceLayoutError(f"{workbook}: cannot read workbook ({detail})") from err
    df.columns = [" ".join(str(c).split()).upper() for c in df.columns]
    for col in ("FILE NAME", "URL"):
        if col not in df.columns:
            raise SourceLayoutError(f"{workbook}: missing column '{col}'")
    hits = df["URL"].str.casefold().apply(lambda u: any(m in u for m in IEEE8023_URL_MARKERS))
    return {_key(n) for n in df.loc[hits, "FILE NAME"] if n.strip()}


@register
class RadiographySource(Source):
    """CRD: kaggle.com/tawsifurrahman/covid19-radiography-database."""

    kind = "radiography"
    short_name = "CRD"
    expected_layout = (
        "COVID-19_Radiography_Dataset/ with class folders COVID/ (or COVID-19/), Normal/, "
        "Lung_Opacity/, Viral Pneumonia/"
    )

    @classmethod
    def open(cls, root: str, name: str, options: SourceOptions) -> Source:
        """``--radiography-classes`` selects the class folders."""
        if name:
            return super().open(root, name, options)  # refused: the study's kinds take no NAME
        return cls(root, classes=tuple(options.radiography_classes))

    def __init__(self, root: str | Path, classes: Sequence[str] = ("COVID",)) -> None:
        if isinstance(classes, str):
            classes = (classes,)
        self.classes: tuple[str, ...] = tuple(dict.fromkeys(canonical_class(c) for c in classes))
        if not self.classes:
            raise ConfigError("radiography classes: give at least one class folder")
        super().__init__(find_dataset_root(root, _looks_like))
        for canon in self.classes:
            if _class_dir(self.root, canon) is None:
                looked = " or ".join(f"{f}/" for f in CLASS_FOLDERS[canon][0])
                raise SourceLayoutError(f"{self.root}: no folder for class {canon!r} ({looked})")

    def looks_valid(self) -> bool:
        return _looks_like(self.root)

    def _workbook(self, class_dir: Path) -> Path | None:
        wanted = {f"{class_dir.name}.metadata.xlsx".casefold()}
        wanted |= {f"{f}.metadata.xlsx".casefold() for f in self._folders_of(class_dir)}
        for folder in (self.root, class_dir):
            for path in sorted(folder.glob("*.xlsx")):
                if path.name.casefold() in wanted and path.is_file():
                    return path
        return None

    @staticmethod
    def _folders_of(class_dir: Path) -> tuple[str, ...]:
        for folders, _ in CLASS_FOLDERS.values():
            if class_dir.name.casefold() in (f.casefold() for f in folders):
                return folders
        return ()

    def scan(self) -> Iterator[SourceRecord | Rejection]:
        for canon in self.classes:
            class_dir = _class_dir(self.root, canon)
            assert class_dir is not None  # checked in __init__
            image_dir = class_dir / "images" if (class_dir / "images").is_dir() else class_dir
            workbook = self._workbook(class_dir)
            in_ieee8023 = ieee8023_names(workbook) if workbook else set()
            label = CLASS_FOLDERS[canon][1]
            for name in FileIndex(image_dir, IMAGE_EXTENSIONS).names:
                rel = (image_dir / name).relative_to(self.root).as_posix()
                if _key(name) in in_ieee8023:
                    yield Rejection(self.kind, rel, "also in ieee8023 (per metadata URL)")
                    continue
                yield SourceRecord(
                    source=self.kind,
                    root=self.root,
                    path=rel,
                    label=label,
                    patient_id=f"{self.kind}:{Path(name).stem}",
                    view="",
                    finding=class_dir.name,
                )
        yield from self._not_selected()

    def _not_selected(self) -> Iterator[Rejection]:
        """Every image of the class folders not asked for, so none disappears silently."""
        for canon in CLASS_FOLDERS:
            class_dir = _class_dir(self.root, canon)
            if canon in self.classes or class_dir is None:
                continue
            image_dir = class_dir / "images" if (class_dir / "images").is_dir() else class_dir
            for name in FileIndex(image_dir, IMAGE_EXTENSIONS).names:
                rel = (image_dir / name).relative_to(self.root).as_posix()
                yield Rejection(self.kind, rel, NOT_SELECTED)
