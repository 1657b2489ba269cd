"""Figure 1 (FCCXRD) source: real sample counts, cp1252 CSV, file by patient id, layout errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cxrguide.data.sources import Rejection, SourceRecord, open_source
from cxrguide.data.sources.figure1 import Figure1Source, patient_of
from cxrguide.errors import SourceLayoutError

REPO_DIR = "FCCXRD/Figure1-COVID-chestxray-dataset"


def _split(items: list) -> tuple[list[SourceRecord], list[Rejection]]:
    return (
        [i for i in items if isinstance(i, SourceRecord)],
        [i for i in items if isinstance(i, Rejection)],
    )


def test_real_sample_counts(shared_data: Path) -> None:
    records, rejections = _split(list(open_source("figure1", str(shared_data / REPO_DIR)).scan()))
    # By hand: pandas groupby(finding, view) on the sample's metadata.csv (32 rows, all X-ray):
    # COVID-19: view blank 15, "AP erect" 5, PA 1; No finding 2 and Pneumonia 1 (view blank);
    # blank finding 8 (views AP erect 4, AP 1, PA 1, blank 2).
    assert Counter((r.label, r.view) for r in records) == {
        ("COVID-19", ""): 15,
        ("COVID-19", "AP"): 5,
        ("COVID-19", "PA"): 1,
        ("Normal", ""): 2,
        ("Pneumonia", ""): 1,
    }
    assert Counter(r.reason for r in rejections) == {"blank finding": 8}
    assert all(r.file.is_file() for r in records)
    # ls images: 29 .jpg + 3 .png; the extension is found from the patient id.
    assert Counter(Path(r.path).suffix for r in records + rejections) == {".jpg": 29, ".png": 3}
    # COVID-00015a/b (COVID-19), COVID-00039a/b/c (COVID-19), COVID-00040a (No finding; 40b blank)
    patients = Counter(r.patient_id for r in records)
    assert patients["figure1:COVID-00015"] == 2 and patients["figure1:COVID-00039"] == 3
    assert patients["figure1:COVID-00040"] == 1


@pytest.mark.parametrize(
    ("image_id", "patient"),
    [("COVID-00015a", "COVID-00015"), ("COVID-00001", "COVID-00001"), ("x", "x")],
)
def test_patient_of(image_id: str, patient: str) -> None:
    assert patient_of(image_id) == patient


def test_windows_1252_metadata_and_missing_file(tmp_path: Path) -> None:
    root = tmp_path / "Figure1-COVID-chestxray-dataset"
    (root / "images").mkdir(parents=True)
    data = (
        b"patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,"
        b"artifacts/distortion,notes\n"
        b"COVID-00001,1,M,33,COVID-19,,38.5\xb0C,90,AP erect,X-ray,,patient\x92s notes\n"
        b"COVID-00002,,F,50,Pneumonia,,,,PA,X-ray,,\n"
        b"COVID-00003,,F,50,No finding,,,,,X-ray,,\n"
        b"COVID-00004,,F,50,COVID-19,,,,L,X-ray,,\n"
    )
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    (root / "metadata.csv").write_bytes(data)
    for name in ("COVID-00001.jpg", "COVID-00002.png", "COVID-00004.jpg", "unrelated.txt"):
        (root / "images" / name).write_bytes(b"")
    records, rejections = _split(list(Figure1Source(tmp_path).scan()))  # parent folder accepted
    assert [(r.path, r.label, r.view) for r in records] == [
        ("images/COVID-00001.jpg", "COVID-19", "AP"),
        ("images/COVID-00002.png", "Pneumonia", "PA"),
    ]
    assert [(r.path, r.reason) for r in rejections] == [
        ("images/COVID-00003", "file not found"),
        ("images/COVID-00004.jpg", "lateral view 'L'"),
    ]


def test_wrong_folder_names_expected_layout(shared_data: Path) -> None:
    with pytest.raises(SourceLayoutError, match="does not look like figure1"):
        open_source("figure1", str(shared_data / "ACCXRD/Actualmed-COVID-chestxray-dataset"))
    with pytest.raises(SourceLayoutError, match="does not look like figure1"):
        open_source("figure1", str(shared_data / "CCXRD/covid-chestxray-dataset"))


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "metadata.csv").write_text(
        "patientid,finding,modality\nCOVID-00001,COVID-19,X-ray\n"
    )
    with pytest.raises(SourceLayoutError, match=r"metadata\.csv: missing column 'view'"):
        list(Figure1Source(tmp_path).scan())
