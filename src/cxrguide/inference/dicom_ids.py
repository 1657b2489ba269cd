"""Which study a result belongs to: a DICOM input's Study / Series / SOP Instance UIDs and
Accession Number, for CSV / JSON / REST results and the DICOM written back.

Only these identifiers leave the reader: never the patient's name, ID or birth date (the SR and
Secondary Capture written by :mod:`cxrguide.inference.dicom_out` carry the patient module because
a PACS files objects by it, but tables and API answers do not).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pydicom

from cxrguide.data.imaging import ImageInfo

UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber")


def read_header(path: str | Path) -> Any:
    """The file's DICOM header without pixel data (pydicom ``Dataset``); OS/parse errors raise."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def uids_of(ds: Any) -> dict[str, str]:
    """The four identifiers of a header (empty strings where absent)."""
    return {key: str(ds.get(key, "") or "").strip() for key in UID_KEYS}


def source_uids(info: ImageInfo) -> dict[str, str]:
    """A DICOM input's identifiers; ``{}`` for other formats or a file gone or unreadable."""
    if info.format != "DICOM":
        return {}
    try:
        return uids_of(read_header(info.path))
    except Exception:  # the file was read a moment ago; a header pydicom now rejects: no UIDs
        return {}
