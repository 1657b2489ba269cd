"""COVID-19 Radiography Database (CRD) source: class folders, the ieee8023 URL filter, layouts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cxrguide.data.sources import Rejection, SourceRecord, open_source
from cxrguide.data.sources.radiography import RadiographySource, canonical_class
from cxrguide.errors import ConfigError, SourceLayoutError

REPO_DIR = "CRD/COVID-19_Radiography_Dataset"


def _split(items: list) -> tuple[list[SourceRecord], list[Rejection]]:
    return (
        [i for i in items if isinstance(i, SourceRecord)],
        [i for i in items if isinstance(i, Rejection)],
    )


def _touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")  # sources never decode pixels


def test_real_sample_default_takes_covid_only(shared_data: Path) -> None:
    src = open_source("radiography", str(shared_data / REPO_DIR))
    records, rejections = _split(list(src.scan()))
    # By hand: `ls COVID | wc -l` = 40, `ls Normal | wc -l` = 40; no metadata workbook here.
    assert Counter(r.label for r in records) == {"COVID-19": 40}
    # the Normal folder is not selected: listed, not silently skipped
    assert {(r.reason, r.path.split("/")[0]) for r in rejections} == {
        ("class folder not selected (--radiography-classes)", "Normal")
    }
    assert len(rejections) == 40
    assert all(r.path.startswith("COVID/COVID-") and r.file.is_file() for r in records)
    assert all(r.view == "" and r.finding == "COVID" for r in records)
    assert {r.patient_id for r in records} == {f"radiography:{Path(r.path).stem}" for r in records}
    assert len({r.patient_id for r in records}) == 40


def test_real_sample_with_normal_and_parent_folder(shared_data: Path) -> None:
    src = RadiographySource(shared_data / "CRD", classes=("covid-19", "Normal"))
    assert src.root == shared_data / REPO_DIR
    records, _ = _split(list(src.scan()))
    assert Counter(r.label for r in records) == {"COVID-19": 40, "Normal": 40}


def test_requested_class_folder_missing(shared_data: Path) -> None:
    with pytest.raises(SourceLayoutError, match="no folder for class 'Viral Pneumonia'"):
        RadiographySource(shared_data / REPO_DIR, classes=("COVID", "Viral Pneumonia"))
    with pytest.raises(ConfigError, match="unknown class 'Tuberculosis'"):
        RadiographySource(shared_data / REPO_DIR, classes=("Tuberculosis",))


def test_class_names_and_labels() -> None:
    assert canonical_class("COVID-19") == "COVID"
    assert canonical_class("lung opacity") == "Lung_Opacity"
    assert canonical_class("NORMAL") == "Normal"


def test_metadata_workbook_drops_ieee8023_images(tmp_path: Path) -> None:
    root = tmp_path / "COVID-19_Radiography_Dataset"
    _touch(root / "COVID" / "images", ["COVID-1.png", "COVID-2.png", "COVID-3.png", "COVID-4.png"])
    _touch(root / "COVID" / "masks", ["COVID-1.png"])  # 2021 layout: masks are not images
    _touch(root / "Lung_Opacity" / "images", ["Lung_Opacity-1.png"])
    _touch(root / "Viral Pneumonia" / "images", ["Viral Pneumonia-1.png"])
    pd.DataFrame(
        {
            "FILE NAME": ["COVID-1", "COVID-2", "COVID-3", "COVID-999"],
            "FORMAT": ["PNG"] * 4,
            "SIZE": ["256*256"] * 4,
            "URL": [
                "https://github.com/ieee8023/covid-chestxray-dataset",
                "https://sirm.org/category/senza-categoria/covid-19/",
                "https://github.com/ieee8023/covid-chestxray-dataset/tree/master/images",
                "https://github.com/ieee8023/covid-chestxray-dataset",
            ],
        }
    ).to_excel(root / "COVID.metadata.xlsx", index=False)
    src = RadiographySource(root, classes=("COVID", "Lung_Opacity", "Viral Pneumonia"))
    records, rejections = _split(list(src.scan()))
    assert [(r.path, r.label) for r in records] == [
        ("COVID/images/COVID-2.png", "COVID-19"),
        ("COVID/images/COVID-4.png", "COVID-19"),  # not in the workbook: kept
        ("Lung_Opacity/images/Lung_Opacity-1.png", "Pneumonia"),
        ("Viral Pneumonia/images/Viral Pneumonia-1.png", "Pneumonia"),
    ]
    # COVID-999 is listed but has no file: the folder is the source of truth.
    assert [(r.path, r.reason) for r in rejections] == [
        ("COVID/images/COVID-1.png", "also in ieee8023 (per metadata URL)"),
        ("COVID/images/COVID-3.png", "also in ieee8023 (per metadata URL)"),
    ]


def test_workbook_without_url_column(tmp_path: Path) -> None:
    _touch(tmp_path / "COVID", ["COVID-1.png"])
    pd.DataFrame({"FILE NAME": ["COVID-1"]}).to_excel(tmp_path / "COVID.metadata.xlsx", index=False)
    with pytest.raises(SourceLayoutError, match=r"COVID\.metadata\.xlsx: missing column 'URL'"):
        list(RadiographySource(tmp_path).scan())


def test_older_release_layout(tmp_path: Path) -> None:
    root = tmp_path / "COVID-19 Radiography Database"
    _touch(root / "COVID-19", ["COVID-19 (1).png", "COVID-19 (2).jpg", "notes.txt"])
    _touch(root / "NORMAL", ["NORMAL (1).png"])
    records, _ = _split(list(RadiographySource(tmp_path, classes=["COVID", "Normal"]).scan()))
    assert [(r.path, r.label) for r in records] == [
        ("COVID-19/COVID-19 (1).png", "COVID-19"),
        ("COVID-19/COVID-19 (2).jpg", "COVID-19"),
        ("NORMAL/NORMAL (1).png", "Normal"),
    ]


def test_wrong_folder_names_expected_layout(shared_data: Path) -> None:
    with pytest.raises(SourceLayoutError, match="does not look like radiography.*COVID/"):
        open_source("radiography", str(shared_data / "CCXRD/covid-chestxray-dataset"))


def test_unselected_class_folders_are_listed_as_rejections(tmp_path: Path) -> None:
    root = tmp_path / "COVID-19_Radiography_Dataset"
    _touch(root / "COVID/images", ["COVID-1.png"])
    _touch(root / "COVID/masks", ["COVID-1.png"])
    _touch(root / "Lung_Opacity/images", ["Lung_Opacity-1.png", "Lung_Opacity-2.png"])
    _touch(root / "Viral Pneumonia/images", ["Viral Pneumonia-1.png"])
    records, rejections = _split(list(RadiographySource(root, classes=["COVID"]).scan()))
    assert [r.path for r in records] == ["COVID/images/COVID-1.png"]
    assert [(r.path, r.reason) for r in rejections] == [
        (f"{d}/images/{d}-{i}.png", "class folder not selected (--radiography-classes)")
        for d, i in (("Viral Pneumonia", 1), ("Lung_Opacity", 1), ("Lung_Opacity", 2))
    ]
