"""Figure 1 COVID-19 chest X-ray dataset (the study's FCCXRD): ``metadata.csv`` + ``images/``.

Point it at ``Figure1-COVID-chestxray-dataset/`` (or a folder holding only that). The CSV is
Windows-1252, not UTF-8 (read as UTF-8 first, then cp1252) and has no file-name column: the image
is ``images/<patientid>.jpg`` (or ``.png``). Ids with a letter suffix (``COVID-00015a``,
``COVID-00015b``) are images of one patient, so the suffix is dropped from ``patient_id`` to keep
them in one split. Labels follow the first finding (``COVID-19``, ``Pneumonia``,
``No finding`` -> Normal); blank findings are rejected. The view is usually blank: such images
are kept with view "" (the study took them) and prepare flags them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from cxrguide.data.sources import register
from cxrguide.data.sources._csv import (
    IMAGE_EXTENSIONS,
    FileIndex,
    find_dataset_root,
    judge_first_finding_row,
    read_header,
    read_metadata_csv,
)
from cxrguide.data.sources.base import Rejection, Source, SourceRecord

METADATA = "metadata.csv"
IMAGES = "images"
REQUIRED_COLUMNS = ("patientid", "finding", "view")
_IMAGE_SUFFIX = re.compile(r"^(.*\d)[a-z]$")


def patient_of(image_id: str) -> str:
    """``COVID-00015b`` -> ``COVID-00015``: the letter numbers images of one patient."""
    match = _IMAGE_SUFFIX.match(image_id)
    return match.group(1) if match else image_id


def _looks_like(folder: Path) -> bool:
    header = read_header(folder / METADATA)
    return (
        (folder / IMAGES).is_dir()
        and "patientid" in header
        and "finding" in header
        and "filename" not in header  # ieee8023
        and "imagename" not in header  # Actualmed
    )


@register
class Figure1Source(Source):
    """FCCXRD: github.com/agchung/Figure1-COVID-chestxray-dataset."""

    kind = "figure1"
    short_name = "FCCXRD"
    expected_layout = (
        "Figure1-COVID-chestxray-dataset/ with metadata.csv (columns patientid, finding, view; "
        "no file-name column) and images/<patientid>.jpg|.png"
    )

    def __init__(self, root: str | Path) -> None:
        super().__init__(find_dataset_root(root, _looks_like))

    def looks_valid(self) -> bool:
        return _looks_like(self.root)

    def scan(self) -> Iterator[SourceRecord | Rejection]:
        df = read_metadata_csv(self.root / METADATA, REQUIRED_COLUMNS)
        files = FileIndex(self.root / IMAGES, IMAGE_EXTENSIONS)
        for row in df.to_dict("records"):
            image_id = row["patientid"]
            rel = f"{IMAGES}/{image_id}"  # extension unknown until the file is found
            if not image_id:
                yield Rejection(self.kind, rel, "blank patientid (names the image file)")
                continue
            name = files.find_stem(image_id, IMAGE_EXTENSIONS)
            if name is not None:
                rel = f"{IMAGES}/{name}"
            label, view, reason = judge_first_finding_row(row)
            if reason:
                yield Rejection(self.kind, rel, reason)
                continue
            if name is None:
                yield Rejection(self.kind, rel, "file not found")
                continue
            yield SourceRecord(
                source=self.kind,
                root=self.root,
                path=rel,
                label=label,
                patient_id=f"{self.kind}:{patient_of(image_id)}",
                view=view,
                finding=row["finding"],
            )
