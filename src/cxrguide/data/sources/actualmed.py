"""Actualmed COVID-19 chest X-ray dataset (the study's ACCXRD): ``metadata.csv`` + ``images/``.

Point it at ``Actualmed-COVID-chestxray-dataset/`` (or a folder holding only that). The CSV has
CRLF line endings and names each file in its ``imagename`` column. Labels follow the first
finding: ``COVID-19`` -> COVID-19, ``No finding`` -> Normal (the study's Table 3 takes Normals
from here), ``Pneumonia`` -> Pneumonia if it ever appears; a blank finding ("Inconclusive" in
the notes) is rejected, as are lateral/CT views and rows whose file is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cxrguide.data.sources import register
from cxrguide.data.sources._csv import (
    FileIndex,
    find_dataset_root,
    judge_first_finding_row,
    read_header,
    read_metadata_csv,
)
from cxrguide.data.sources.base import Rejection, Source, SourceRecord

METADATA = "metadata.csv"
IMAGES = "images"
REQUIRED_COLUMNS = ("patientid", "finding", "view", "imagename")


def _looks_like(folder: Path) -> bool:
    header = read_header(folder / METADATA)
    return (folder / IMAGES).is_dir() and "imagename" in header and "finding" in header


@register
class ActualmedSource(Source):
    """ACCXRD: github.com/agchung/Actualmed-COVID-chestxray-dataset."""

    kind = "actualmed"
    short_name = "ACCXRD"
    expected_layout = (
        "Actualmed-COVID-chestxray-dataset/ with metadata.csv (columns patientid, finding, "
        "view, imagename) and images/"
    )

    def __init__(self, root: str | Path) -> None:
        super().__init__(find_dataset_root(root, _looks_like))

    def looks_valid(self) -> bool:
        return _looks_like(self.root)

    def scan(self) -> Iterator[SourceRecord | Rejection]:
        df = read_metadata_csv(self.root / METADATA, REQUIRED_COLUMNS)
        files = FileIndex(self.root / IMAGES)
        for row in df.to_dict("records"):
            filename = row["imagename"]
            rel = f"{IMAGES}/{filename}"
            if not filename:
                yield Rejection(self.kind, rel, "no file name in metadata")
                continue
            label, view, reason = judge_first_finding_row(row)
            if reason:
                yield Rejection(self.kind, rel, reason)
                continue
            name = files.find(filename)
            if name is None:
                yield Rejection(self.kind, rel, "file not found")
                continue
            pid = row["patientid"] or Path(filename).stem
            yield SourceRecord(
                source=self.kind,
                root=self.root,
                path=f"{IMAGES}/{name}",
                label=label,
                patient_id=f"{self.kind}:{pid}",
                view=view,
                finding=row["finding"],
            )
