"""``table``: anyone's films listed in a CSV.

Columns: ``file`` or ``path`` (relative to the CSV's folder; ``file`` wins when both exist) and
``label`` are required; ``patient_id``, ``view`` and ``site`` are optional. ``--source
table=CSV`` names the source after the CSV's folder; ``--source table:NAME=CSV`` explicitly.
Labels go through the label map (:mod:`.labelmap`). A row is rejected, with its reason, when its
file cell is blank or leaves the CSV's folder, its label is blank or unmapped, its view is
lateral or unknown, its file is missing, or its file was listed on an earlier row.
``patient_id`` (source-prefixed) groups a patient's films in one split; a blank one falls back
to the file stem, as for sources without ids. A blank ``site`` means the source itself.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from cxrguide.data.sources import register
from cxrguide.data.sources._csv import FileIndex, norm_view, read_metadata_csv
from cxrguide.data.sources.base import Rejection, Source, SourceOptions, SourceRecord
from cxrguide.data.sources.folder import derived_name
from cxrguide.data.sources.labelmap import LabelMap
from cxrguide.errors import SourceLayoutError

FILE_COLUMNS = ("file", "path")
OPTIONAL_COLUMNS = ("patient_id", "view", "site")


@register
class TableSource(Source):
    """A CSV (file or path, label[, patient_id, view, site]) beside or above its films."""

    kind = "table"
    short_name = "TABLE"
    expected_layout = "a CSV with columns file (or path) and label; optional patient_id, view, site"

    @classmethod
    def open(cls, root: str, name: str, options: SourceOptions) -> Source:
        return cls(root, name=name, label_map=LabelMap(options.label_map))

    def __init__(self, csv: str | Path, name: str = "", label_map: LabelMap | None = None) -> None:
        csv = Path(csv)
        if csv.is_dir():
            raise SourceLayoutError(
                f"{csv}: is a folder; a table source takes its CSV file (e.g. {csv / 'labels.csv'})"
            )
        if not csv.is_file():
            raise SourceLayoutError(f"{csv}: table CSV not found")
        self.csv = csv
        self.label_map = label_map or LabelMap()
        self.name = name or derived_name(csv.parent)
        self.rows = read_metadata_csv(csv, ())
        columns = {c.casefold(): c for c in self.rows.columns}
        if "label" not in columns:
            raise SourceLayoutError(f"{csv}: no label column ({self._expected(columns)})")
        self.file_column = next((columns[c] for c in FILE_COLUMNS if c in columns), "")
        if not self.file_column:
            raise SourceLayoutError(f"{csv}: no file or path column ({self._expected(columns)})")
        self.columns = {c: columns.get(c, "") for c in ("label", *OPTIONAL_COLUMNS)}
        super().__init__(csv.parent)

    def _expected(self, columns: dict[str, str]) -> str:
        found = ", ".join(list(columns.values())[:8]) or "none"
        return f"a table needs {self.expected_layout}; found: {found}"

    def looks_valid(self) -> bool:
        return True  # the columns were checked on opening, with their own messages

    def _cell(self, row: dict[str, str], column: str) -> str:
        name = self.columns[column]
        return row.get(name, "") if name else ""

    def scan(self) -> Iterator[SourceRecord | Rejection]:
        indexes: dict[str, FileIndex] = {}
        listed: dict[str, int] = {}
        for line, row in enumerate(self.rows.to_dict("records"), start=2):
            rel = row[self.file_column].replace("\\", "/")
            where = rel or f"{self.csv.name} line {line}"
            reason, label, view, rel = self._judge(rel, row)
            if not reason:
                folder, _, base = rel.rpartition("/")
                index = indexes.setdefault(folder, FileIndex(self.root / folder))
                found = index.find(base)
                if found is None:
                    reason = "file not found"
                else:
                    rel = f"{folder}/{found}" if folder else found
                    if rel in listed:
                        reason = f"listed again (first on line {listed[rel]} of {self.csv.name})"
                    listed.setdefault(rel, line)
            if reason:
                yield Rejection(self.name, where, reason)
                continue
            patient = self._cell(row, "patient_id") or PurePosixPath(rel).stem
            yield SourceRecord(
                source=self.name,
                root=self.root,
                path=rel,
                label=label,
                patient_id=f"{self.name}:{patient}",
                view=view,
                finding=self._cell(row, "label"),
                site=self._cell(row, "site"),
            )

    def _judge(self, rel: str, row: dict[str, str]) -> tuple[str, str, str, str]:
        """(rejection reason or "", class, view, normalised path) from the row's cells alone."""
        if not rel:
            return "blank file cell", "", "", rel
        clean = posixpath.normpath(rel)
        if rel.startswith("/") or clean == ".." or clean.startswith("../") or ":" in rel[:3]:
            return f"file '{rel}' lies outside the table's folder", "", "", rel
        raw = self._cell(row, "label")
        label = self.label_map.lookup(raw)
        if label is None:
            return self.label_map.why_not(raw), "", "", rel
        view, reason = norm_view(self._cell(row, "view"))
        return reason or "", label, view, clean
