"""Helpers shared by the source modules: metadata CSVs, file look-up, views, root discovery.

Publishers' metadata files are messy in small ways (Windows-1252 bytes, CRLF line endings,
trailing empty columns, ``.PNG`` on disk for ``.png`` in the CSV); these helpers absorb that once
so each source module only states its own columns and label rules.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd

from cxrguide.errors import SourceLayoutError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_UNRECORDED_VIEWS = {"", "?", "unknown", "n/a", "na", "none"}
_LATERAL_VIEWS = {"l", "ll", "rl", "lat", "lateral", "left lateral", "right lateral"}
_CT_VIEWS = {"axial", "coronal", "sagittal"}
_XRAY_MODALITIES = {"xray", "x ray", "cr", "dx", "radiograph"}


def _decode(data: bytes) -> str:
    """UTF-8 (with or without BOM) first; Windows-1252 as the fallback Figure 1 needs."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read_header(path: Path) -> list[str]:
    """Column names of a CSV from its first line only; [] if unreadable (cheap layout checks)."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(65536)
    except OSError:
        return []
    row = next(csv.reader([_decode(first).strip("\r\n")]), [])
    return [c.strip() for c in row]


def read_metadata_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """Every cell as a stripped string ('' when blank); raises if unparsable or a column is missing.

    Blanks stay '' (not NaN) so that a blank finding is a plain string test, and text such as
    "NA" or "None" is never silently turned into a missing value.
    """
    try:
        text = _decode(path.read_bytes())
    except OSError as err:
        raise SourceLayoutError(f"{path}: cannot read ({err.strerror or err})") from err
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as err:
        detail = " ".join(str(err).split())
        raise SourceLayoutError(f"{path}: cannot parse CSV ({detail})") from err
    df.columns = [str(c).strip() for c in df.columns]
    for col in required:
        if col not in df.columns:
            raise SourceLayoutError(f"{path}: missing column '{col}'")
    return df.apply(lambda s: s.str.strip())


def norm_view(text: str) -> tuple[str, str | None]:
    """Map a recorded view to ("PA" | "AP" | "", rejection reason or None).

    AP Supine / AP semi erect / AP erect / APS count as AP; lateral and CT views are rejected;
    a blank or "?" view is kept as "" (prepare flags it as unrecorded).
    """
    shown = " ".join(str(text).split())
    key = shown.casefold()
    if key in _UNRECORDED_VIEWS:
        return "", None
    if key in _LATERAL_VIEWS:
        return "", f"lateral view '{shown}'"
    if key in _CT_VIEWS:
        return "", f"CT view '{shown}'"
    first = key.replace("-", " ").replace("_", " ").split()[0]
    if first == "pa":
        return "PA", None
    if first in ("ap", "aps"):
        return "AP", None
    return "", f"unrecognised view '{shown}'"


def modality_reason(modality: str, view: str, blank_ok: bool) -> str | None:
    """Rejection reason when the row is not a plain radiograph, else None."""
    shown = " ".join(str(modality).split())
    key = shown.casefold().replace("-", "")
    if key in _XRAY_MODALITIES or (blank_ok and not key):
        return None
    if key == "ct":
        return f"CT image (modality '{shown}', view '{view}')"
    return f"modality '{shown}' is not X-ray"


class FileIndex:
    """One listing of a folder, looked up exactly, then case-insensitively, or by stem.

    Listing once is much cheaper than one ``stat`` per metadata row, and the case-insensitive
    fallback finds ``16745_2_1.PNG`` for a row that says ``.png`` (the record keeps the real name).
    """

    def __init__(self, folder: Path, extensions: Iterable[str] | None = None) -> None:
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            names = []
        if extensions is not None:
            exts = tuple(e.lower() for e in extensions)
            names = [n for n in names if n.lower().endswith(exts)]
        self.names = names
        self._exact = set(names)
        self._folded: dict[str, str] = {}
        self._stems: dict[str, list[str]] = {}
        for name in names:
            self._folded.setdefault(name.casefold(), name)
            self._stems.setdefault(os.path.splitext(name)[0].casefold(), []).append(name)

    def find(self, name: str) -> str | None:
        if name in self._exact:
            return name
        return self._folded.get(name.casefold())

    def find_stem(self, stem: str, extensions: Sequence[str]) -> str | None:
        """The file ``stem.<ext>``, preferring extensions in the given order."""
        candidates = self._stems.get(stem.casefold(), [])
        for ext in extensions:
            for name in candidates:
                if name.lower().endswith(ext):
                    return name
        return None


def find_dataset_root(root: str | Path, looks_like: Callable[[Path], bool]) -> Path:
    """``root`` itself, or its only sub-folder that looks like the dataset (the download parent).

    Anything else returns ``root`` unchanged, so the caller's layout check names the folder the
    user actually gave.
    """
    root = Path(root)
    if not root.is_dir() or looks_like(root):
        return root
    try:
        matches = [c for c in sorted(root.iterdir()) if c.is_dir() and looks_like(c)]
    except OSError:
        return root
    return matches[0] if len(matches) == 1 else root


_FIRST_FINDING = {"covid-19": "COVID-19", "pneumonia": "Pneumonia", "no finding": "Normal"}


def judge_first_finding_row(row: dict[str, str]) -> tuple[str, str, str | None]:
    """(label, view, rejection reason) for an Actualmed / Figure 1 metadata row.

    Those sets (published by the COVID-Net team) use one vocabulary: the first finding is
    ``COVID-19``, ``Pneumonia`` or ``No finding``; blank means inconclusive and is dropped.
    Modality may be blank (treated as X-ray); the view may be blank (kept, flagged by prepare).
    """
    reason = modality_reason(row.get("modality", ""), row.get("view", ""), blank_ok=True)
    if reason:
        return "", "", reason
    finding = row["finding"]
    first = finding.replace(";", ",").split(",")[0].strip()
    if not first:
        return "", "", "blank finding"
    label = _FIRST_FINDING.get(" ".join(first.split()).casefold())
    if label is None:
        return "", "", f"unmapped finding '{finding}'"
    view, reason = norm_view(row.get("view", ""))
    return label, view, reason
