"""RSNA Pneumonia Detection Challenge (Kaggle; the study's RSNAPDD): label CSVs + DICOMs.

Point it at the extracted ``rsna-pneumonia-detection-challenge/`` (or a folder holding only
that): ``stage_2_detailed_class_info.csv`` (``patientId,class``), ``stage_2_train_labels.csv``
(``patientId,x,y,width,height,Target``, one row per box) and ``stage_2_train_images/<id>.dcm``.
PNG/JPEG conversions named ``<id>.png|.jpg`` in that folder are accepted when no DICOM is there.

One record per patient (box rows collapse). ``Normal`` -> Normal, ``Lung Opacity`` (Target 1)
-> Pneumonia; ``No Lung Opacity / Not Normal`` is dropped (COVIDx rules; torchxrayvision would
count it as negative). The two CSVs are cross-checked: a patient whose class and Target
disagree, or who is missing from one file, is rejected with the reason. The view comes from the
DICOM header (``ViewPosition``, read without pixels); converted PNG/JPEG files have no view ("").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from cxrguide.data.sources import register
from cxrguide.data.sources._csv import FileIndex, find_dataset_root, norm_view, read_metadata_csv
from cxrguide.data.sources.base import Rejection, Source, SourceRecord

CLASS_INFO = "stage_2_detailed_class_info.csv"
LABELS = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"
IMAGE_EXTENSIONS = (".dcm", ".png", ".jpg", ".jpeg")  # preference order

NORMAL = "Normal"
OPACITY = "Lung Opacity"
NOT_NORMAL = "No Lung Opacity / Not Normal"
#: Detailed class -> (Target it implies, label or None when dropped).
CLASS_RULES: dict[str, tuple[int, str | None]] = {
    NORMAL: (0, "Normal"),
    OPACITY: (1, "Pneumonia"),
    NOT_NORMAL: (0, None),
}


def _looks_like(folder: Path) -> bool:
    return (
        (folder / CLASS_INFO).is_file()
        and (folder / LABELS).is_file()
        and (folder / IMAGES).is_dir()
    )


def _group(df, column: str) -> dict[str, list[str]]:
    """patientId -> distinct values of ``column`` in file order (patients in file order too)."""
    out: dict[str, list[str]] = {}
    for pid, value in zip(df["patientId"], df[column], strict=True):
        if not pid:
            continue
        values = out.setdefault(pid, [])
        if value not in values:
            values.append(value)
    return out


def dicom_view(path: Path) -> tuple[str, str | None]:
    """(view, rejection reason) from a DICOM header; never reads pixel data."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ViewPosition"])
    except (InvalidDicomError, OSError, EOFError, ValueError) as err:
        detail = " ".join(str(err).split())
        return "", f"unreadable DICOM header ({detail})"
    return norm_view(str(ds.get("ViewPosition", "") or ""))


@register
class RsnaSource(Source):
    """RSNAPDD: kaggle.com/c/rsna-pneumonia-detection-challenge (stage 2 training set)."""

    kind = "rsna"
    short_name = "RSNAPDD"
    expected_layout = (
        f"rsna-pneumonia-detection-challenge/ with {CLASS_INFO}, {LABELS} and {IMAGES}/"
    )

    def __init__(self, root: str | Path) -> None:
        super().__init__(find_dataset_root(root, _looks_like))

    def looks_valid(self) -> bool:
        return _looks_like(self.root)

    def scan(self) -> Iterator[SourceRecord | Rejection]:
        classes = _group(read_metadata_csv(self.root / CLASS_INFO, ("patientId", "class")), "class")
        targets = _group(read_metadata_csv(self.root / LABELS, ("patientId", "Target")), "Target")
        files = FileIndex(self.root / IMAGES, IMAGE_EXTENSIONS)
        for pid in list(classes) + [p for p in targets if p not in classes]:
            name = files.find_stem(pid, IMAGE_EXTENSIONS)
            rel = f"{IMAGES}/{name or pid + '.dcm'}"
            label, reason = self._judge(classes.get(pid, []), targets.get(pid, []))
            if reason is None and name is None:
                reason = "file not found"
            view = ""
            if reason is None and name is not None and name.lower().endswith(".dcm"):
                view, reason = dicom_view(self.root / rel)
            if reason is not None or label is None:
                yield Rejection(self.kind, rel, reason or f"unmapped class for {pid}")
                continue
            yield SourceRecord(
                source=self.kind,
                root=self.root,
                path=rel,
                label=label,
                patient_id=f"{self.kind}:{pid}",
                view=view,
                finding=classes[pid][0],
            )

    @staticmethod
    def _judge(cls_values: list[str], target_values: list[str]) -> tuple[str | None, str | None]:
        """(label, rejection reason) from one patient's rows in the two CSVs."""
        if not cls_values:
            return None, f"no row in {CLASS_INFO}"
        if not target_values:
            return None, f"no row in {LABELS}"
        if len(cls_values) > 1:
            return None, f"conflicting classes {cls_values} in {CLASS_INFO}"
        if len(target_values) > 1:
            return None, f"conflicting Target values {target_values} in {LABELS}"
        cls, target = cls_values[0], target_values[0]
        if cls not in CLASS_RULES:
            return None, f"unmapped class '{cls}'"
        expected, label = CLASS_RULES[cls]
        if target.removesuffix(".0") != str(expected):
            return None, f"class '{cls}' but Target '{target}' in {LABELS}"
        if label is None:
            return None, f"dropped class '{cls}'"
        return label, None
