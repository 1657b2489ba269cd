"""Actualmed (ACCXRD) source: real sample counts, CRLF CSV, missing files, layout errors."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cxrguide.data.sources import Rejection, SourceRecord, open_source
from cxrguide.data.sources.actualmed import ActualmedSource
from cxrguide.errors import SourceLayoutError

REPO_DIR = "ACCXRD/Actualmed-COVID-chestxray-dataset"


def _split(items: list) -> tuple[list[SourceRecord], list[Rejection]]:
    return (
        [i for i in items if isinstance(i, SourceRecord)],
        [i for i in items if isinstance(i, Rejection)],
    )


def test_real_sample_counts(shared_data: Path) -> None:
    root = shared_data / REPO_DIR
    assert b"\r\n" in (root / "metadata.csv").read_bytes()  # the CRLF case is really exercised
    records, rejections = _split(list(open_source("actualmed", str(root)).scan()))
    # By hand: pandas groupby(finding, view) on the sample's metadata.csv (29 rows, all X-ray):
    # COVID-19 AP 13 + PA 1; No finding PA 8 + AP 2; blank finding (PA) 5.
    assert Counter((r.label, r.view) for r in records) == {
        ("COVID-19", "AP"): 13,
        ("COVID-19", "PA"): 1,
        ("Normal", "PA"): 8,
        ("Normal", "AP"): 2,
    }
    assert Counter(r.reason for r in rejections) == {"blank finding": 5}
    assert {r.finding for r in records} == {"COVID-19", "No finding"}  # no stray "\r"
    assert all(
        r.file.is_file() and r.path.startswith(("images/CR.", "images/DX.")) for r in records
    )
    assert all(r.patient_id.startswith("actualmed:ANON") for r in records)


def test_parent_folder_is_accepted(shared_data: Path) -> None:
    assert ActualmedSource(shared_data / "ACCXRD").root == shared_data / REPO_DIR


def test_missing_files_are_rejected(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "Actualmed-COVID-chestxray-dataset"
    (root / "images").mkdir(parents=True)
    shutil.copy(shared_data / REPO_DIR / "metadata.csv", root / "metadata.csv")
    meta = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    labelled = meta[meta["finding"] != ""]["imagename"].tolist()
    for name in labelled[:7]:  # empty stand-ins: sources never decode pixels
        (root / "images" / name).write_bytes(b"")
    records, rejections = _split(list(ActualmedSource(root).scan()))
    assert [r.path for r in records] == [f"images/{n}" for n in labelled[:7]]
    # 24 labelled rows in the sample (14 COVID-19 + 10 No finding): 17 without their file.
    assert Counter(r.reason for r in rejections) == {"file not found": 17, "blank finding": 5}


def test_wrong_folder_names_expected_layout(shared_data: Path) -> None:
    with pytest.raises(SourceLayoutError, match="does not look like actualmed.*imagename"):
        open_source("actualmed", str(shared_data / "CCXRD/covid-chestxray-dataset"))


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "metadata.csv").write_bytes(b"patientid,finding,imagename\r\nANON1,COVID-19,a.png\r\n")
    with pytest.raises(SourceLayoutError, match=r"metadata\.csv: missing column 'view'"):
        list(ActualmedSource(root).scan())
