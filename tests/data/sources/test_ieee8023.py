"""ieee8023 (CCXRD) source: real sample counts, both finding schemas, layout and CSV errors."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from cxrguide.data.sources import Rejection, SourceRecord, open_source
from cxrguide.data.sources.ieee8023 import Ieee8023Source, map_finding
from cxrguide.errors import SourceLayoutError

REPO_DIR = "CCXRD/covid-chestxray-dataset"


def _split(items: list) -> tuple[list[SourceRecord], list[Rejection]]:
    records = [i for i in items if isinstance(i, SourceRecord)]
    rejections = [i for i in items if isinstance(i, Rejection)]
    assert len(records) + len(rejections) == len(items)
    return records, rejections


def test_real_sample_counts(shared_data: Path) -> None:
    src = open_source("ieee8023", str(shared_data / REPO_DIR))
    records, rejections = _split(list(src.scan()))
    # By hand: pandas groupby(finding, modality, view) on the sample's metadata.csv (104 rows):
    # COVID-19 X-ray PA 24 + AP 6 + AP Supine 10 = 40 (+ CT Axial 2, + lateral L 1);
    # No Finding PA 7 + AP 2 + AP Supine 4 = 13;
    # pneumonia: Influenza 1, Klebsiella 3, Legionella 3, Lipoid 3, Mycoplasma Bacterial
    # Pneumonia 3, Pneumocystis 7, Pneumonia 9, SARS 7 (PA 4, AP 3), Streptococcus 8 = 44;
    # todo 3 (AP 1, L 2) and ARDS 1 are dropped.
    assert Counter(r.label for r in records) == {"COVID-19": 40, "Pneumonia": 44, "Normal": 13}
    assert Counter((r.label, r.view) for r in records) == {
        ("COVID-19", "PA"): 24,
        ("COVID-19", "AP"): 16,
        ("Normal", "PA"): 7,
        ("Normal", "AP"): 6,
        ("Pneumonia", "PA"): 41,
        ("Pneumonia", "AP"): 3,
    }
    # The finding is judged before the view, so the two lateral todo rows count as todo.
    assert Counter(r.reason for r in rejections) == {
        "unmapped finding 'todo'": 3,
        "CT image (modality 'CT', view 'Axial')": 2,
        "unmapped finding 'ARDS'": 1,
        "lateral view 'L'": 1,
    }
    assert all(r.source == "ieee8023" and r.file.is_file() for r in records)
    assert all(
        r.path.startswith("images/") and r.patient_id.startswith("ieee8023:") for r in records
    )
    assert Counter(r.finding for r in records if r.label == "Pneumonia")["Lipoid"] == 3


def test_image_listed_under_two_patients_is_yielded_twice(shared_data: Path) -> None:
    records, _ = _split(list(Ieee8023Source(shared_data / REPO_DIR).scan()))
    by_path: dict[str, set[str]] = {}
    for r in records:
        by_path.setdefault(r.path, set()).add(r.patient_id)
    twice = {p: ids for p, ids in by_path.items() if len(ids) > 1}
    # grep: 000001-24/000006-17/000007-15 (patients 285, 339) and 000001-27 (287, 340).
    assert twice == {
        "images/000001-24.jpg": {"ieee8023:285", "ieee8023:339"},
        "images/000006-17.jpg": {"ieee8023:285", "ieee8023:339"},
        "images/000007-15.jpg": {"ieee8023:285", "ieee8023:339"},
        "images/000001-27.jpg": {"ieee8023:287", "ieee8023:340"},
    }
    assert "images/16745_2_1.PNG" in by_path  # upper-case extension kept as on disk


def test_parent_folder_is_accepted(shared_data: Path) -> None:
    src = open_source("ieee8023", str(shared_data / "CCXRD"))
    assert src.root == shared_data / REPO_DIR


@pytest.mark.parametrize(
    ("finding", "label"),
    [
        ("COVID-19", "COVID-19"),
        ("COVID-19, ARDS", "COVID-19"),
        ("Pneumonia/Viral/COVID-19", "COVID-19"),
        ("Pneumonia/Bacterial/Streptococcus", "Pneumonia"),
        ("Pneumonia/Bacterial/Staphylococcus/MRSA", "Pneumonia"),
        ("Pneumonia/Viral/Influenza/H1N1", "Pneumonia"),
        ("Pneumonia/Viral/Herpes ", "Pneumonia"),
        ("Pneumonia/Fungal/Aspergillosis", "Pneumonia"),
        ("Pneumonia/Lipoid", "Pneumonia"),
        ("SARS", "Pneumonia"),
        ("E.Coli", "Pneumonia"),
        ("Mycoplasma Bacterial Pneumonia", "Pneumonia"),
        ("Pneumonia", "Pneumonia"),
        ("No Finding", "Normal"),
        ("ARDS", None),
        ("todo", None),
        ("Unknown", None),
        ("Tuberculosis", None),
        ("No Finding, ARDS", None),
        ("", None),
    ],
)
def test_map_finding(finding: str, label: str | None) -> None:
    assert map_finding(finding) == label


COLUMNS = ["patientid", "finding", "view", "modality", "folder", "filename"]


def _write_dataset(root: Path, rows: list[list[str]], files: list[str], columns=COLUMNS) -> Path:
    (root / "images").mkdir(parents=True)
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    for name in files:
        (root / "images" / name).write_bytes(b"not decoded by sources")
    return root


def test_hierarchical_schema(tmp_path: Path) -> None:
    rows = [
        ["1", "Pneumonia/Viral/COVID-19", "AP semi erect", "X-ray", "images", "a.jpg"],
        ["1", "Pneumonia/Viral/COVID-19", "AP Erect", "X-ray", "images", "b.jpg"],
        ["2", "Pneumonia/Bacterial/Streptococcus", "PA", "X-ray", "images", "c.png"],
        ["3", "Pneumonia/Viral/Influenza/H1N1", "?", "X-ray", "images", "d.png"],
        ["4", "No Finding", "AP Supine", "X-ray", "images", "e.jpeg"],
        ["5", "Tuberculosis", "PA", "X-ray", "images", "f.jpg"],
        ["6", "Unknown", "PA", "X-ray", "images", "g.jpg"],
        ["7", "Pneumonia/Viral/COVID-19", "Coronal", "CT", "images", "h.jpg"],
        ["8", "Pneumonia/Viral/COVID-19", "Axial", "CT", "volumes", "i.nii.gz"],
        ["9", "Pneumonia/Viral/COVID-19", "L", "X-ray", "images", "j.jpg"],
        ["10", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "images", "missing.jpg"],
        ["", "Pneumonia/Fungal/Pneumocystis", "PA", "X-ray", "images", "k.png"],
    ]
    root = _write_dataset(
        tmp_path / "ds",
        rows,
        ["a.jpg", "b.jpg", "c.png", "d.png", "e.jpeg", "f.jpg", "g.jpg", "h.jpg", "j.jpg", "K.PNG"],
    )
    records, rejections = _split(list(Ieee8023Source(root).scan()))
    got = [(r.path, r.label, r.view, r.patient_id) for r in records]
    assert got == [
        ("images/a.jpg", "COVID-19", "AP", "ieee8023:1"),
        ("images/b.jpg", "COVID-19", "AP", "ieee8023:1"),
        ("images/c.png", "Pneumonia", "PA", "ieee8023:2"),
        ("images/d.png", "Pneumonia", "", "ieee8023:3"),  # "?" = view not recorded
        ("images/e.jpeg", "Normal", "AP", "ieee8023:4"),
        ("images/K.PNG", "Pneumonia", "PA", "ieee8023:k"),  # case-insensitive; id from stem
    ]
    assert records[0].finding == "Pneumonia/Viral/COVID-19"
    assert [(r.path, r.reason) for r in rejections] == [
        ("images/f.jpg", "unmapped finding 'Tuberculosis'"),
        ("images/g.jpg", "unmapped finding 'Unknown'"),
        ("images/h.jpg", "CT image (modality 'CT', view 'Coronal')"),
        ("volumes/i.nii.gz", "folder 'volumes' is not images"),
        ("images/j.jpg", "lateral view 'L'"),
        ("images/missing.jpg", "file not found"),
    ]


def test_wrong_folder_names_expected_layout(shared_data: Path) -> None:
    figure1 = shared_data / "FCCXRD/Figure1-COVID-chestxray-dataset"
    with pytest.raises(SourceLayoutError, match="does not look like ieee8023") as err:
        open_source("ieee8023", str(figure1))
    assert str(figure1) in str(err.value) and "filename" in str(err.value)
    with pytest.raises(SourceLayoutError, match="folder not found"):
        Ieee8023Source(shared_data / "no-such-folder")


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    columns = ["patientid", "finding", "view", "folder", "filename"]  # no modality
    root = _write_dataset(
        tmp_path / "ds", [["1", "COVID-19", "PA", "images", "a.jpg"]], ["a.jpg"], columns
    )
    src = Ieee8023Source(root)
    with pytest.raises(SourceLayoutError, match=r"metadata\.csv: missing column 'modality'"):
        list(src.scan())


def test_unparsable_csv_is_a_layout_error(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path / "ds", [], [])
    with open(root / "metadata.csv", "a", encoding="utf-8") as fh:
        fh.write("1,COVID-19,PA,X-ray,images,a.jpg\n2,COVID-19,PA,X-ray,images,b.jpg,x,y,z\n")
    with pytest.raises(SourceLayoutError, match=r"metadata\.csv: cannot parse CSV"):
        list(Ieee8023Source(root).scan())
