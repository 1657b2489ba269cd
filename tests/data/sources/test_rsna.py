"""RSNA (RSNAPDD) source: label mapping over the two CSVs, DICOM view, missing/odd files."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxrguide.data.sources import Rejection, SourceRecord, open_source
from cxrguide.data.sources.rsna import RsnaSource, dicom_view
from cxrguide.errors import SourceLayoutError

KAGGLE_DIR = "RSNAPDD/rsna-pneumonia-detection-challenge"
REAL_ID = "c64d5667-a776-4f95-9e21-bfabafb07740"
NOT_NORMAL = "No Lung Opacity / Not Normal"


def _split(items: list) -> tuple[list[SourceRecord], list[Rejection]]:
    return (
        [i for i in items if isinstance(i, SourceRecord)],
        [i for i in items if isinstance(i, Rejection)],
    )


def write_dcm(path: Path, patient_id: str, view: str) -> None:
    """A header-only DICOM (no pixels): enough for a source, which only reads ViewPosition."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.ViewPosition = view
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def kaggle_copy(shared_data: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """metadata_only_rows/ laid out like the Kaggle download, with no images yet."""
    root = tmp_path / "rsna-pneumonia-detection-challenge"
    (root / "stage_2_train_images").mkdir(parents=True)
    for name in ("stage_2_detailed_class_info.csv", "stage_2_train_labels.csv"):
        shutil.copy(shared_data / "RSNAPDD/metadata_only_rows" / name, root / name)
    info = pd.read_csv(root / "stage_2_detailed_class_info.csv").drop_duplicates()
    return root, dict(zip(info["patientId"], info["class"], strict=True))


def test_real_folder_single_dicom(shared_data: Path) -> None:
    src = open_source("rsna", str(shared_data / "RSNAPDD"))  # parent folder: one Kaggle folder
    assert src.root == shared_data / KAGGLE_DIR
    records, rejections = _split(list(src.scan()))
    assert records == []
    assert rejections == [
        Rejection("rsna", f"stage_2_train_images/{REAL_ID}.dcm", f"dropped class '{NOT_NORMAL}'")
    ]
    # SOURCES.md: ViewPosition AP in the real header.
    assert dicom_view(src.root / f"stage_2_train_images/{REAL_ID}.dcm") == ("AP", None)


def test_mapping_over_metadata_only_rows(kaggle_copy: tuple[Path, dict[str, str]]) -> None:
    root, classes = kaggle_copy
    views = {pid: ("PA", "AP")[i % 2] for i, pid in enumerate(classes)}
    for pid, view in views.items():
        write_dcm(root / "stage_2_train_images" / f"{pid}.dcm", pid, view)
    records, rejections = _split(list(RsnaSource(root).scan()))
    # By hand: 145 rows per CSV, 120 distinct patients; drop_duplicates(class info) gives
    # Normal 40, Lung Opacity 40 (25 of them with 2 box rows), No Lung Opacity / Not Normal 40.
    assert Counter(r.label for r in records) == {"Normal": 40, "Pneumonia": 40}
    assert Counter(r.reason for r in rejections) == {f"dropped class '{NOT_NORMAL}'": 40}
    assert len({r.patient_id for r in records}) == 80  # one record per patient
    for r in records:
        pid = r.patient_id.removeprefix("rsna:")
        assert r.path == f"stage_2_train_images/{pid}.dcm"
        assert r.finding == classes[pid]
        assert r.label == {"Normal": "Normal", "Lung Opacity": "Pneumonia"}[classes[pid]]
        assert r.view == views[pid]  # from each file's ViewPosition
    assert {r.view for r in records} == {"PA", "AP"}


def test_missing_converted_and_lateral_files(kaggle_copy: tuple[Path, dict[str, str]]) -> None:
    root, classes = kaggle_copy
    normal = [p for p, c in classes.items() if c == "Normal"]
    opacity = [p for p, c in classes.items() if c == "Lung Opacity"]
    images = root / "stage_2_train_images"
    for pid in normal[:10]:
        write_dcm(images / f"{pid}.dcm", pid, "PA")
    for pid in opacity[:5]:
        (images / f"{pid}.png").write_bytes(b"")  # a PNG conversion: no header, view unknown
    write_dcm(images / f"{opacity[5]}.dcm", opacity[5], "LL")
    (images / f"{opacity[6]}.dcm").write_bytes(b"not a dicom file")
    records, rejections = _split(list(RsnaSource(root).scan()))
    assert Counter((r.label, r.view, Path(r.path).suffix) for r in records) == {
        ("Normal", "PA", ".dcm"): 10,
        ("Pneumonia", "", ".png"): 5,
    }
    reasons = Counter(r.reason.split(" (")[0] for r in rejections)
    assert reasons == {
        "file not found": 30 + 33,  # 40 - 10 Normal, 40 - 7 Lung Opacity
        f"dropped class '{NOT_NORMAL}'": 40,
        "lateral view 'LL'": 1,
        "unreadable DICOM header": 1,
    }
    missing = next(r for r in rejections if r.reason == "file not found")
    assert missing.path.startswith("stage_2_train_images/") and missing.path.endswith(".dcm")


def test_inconsistent_csvs_are_rejected(kaggle_copy: tuple[Path, dict[str, str]]) -> None:
    root, classes = kaggle_copy
    for pid in classes:
        write_dcm(root / "stage_2_train_images" / f"{pid}.dcm", pid, "AP")
    normal = [p for p, c in classes.items() if c == "Normal"]
    opacity = [p for p, c in classes.items() if c == "Lung Opacity"]
    labels = pd.read_csv(root / "stage_2_train_labels.csv", dtype=str, keep_default_na=False)
    labels.loc[labels["patientId"] == normal[0], "Target"] = "1"
    labels.loc[labels["patientId"] == opacity[0], "Target"] = "0"
    labels = labels[labels["patientId"] != normal[1]]
    labels.to_csv(root / "stage_2_train_labels.csv", index=False)
    info = pd.read_csv(root / "stage_2_detailed_class_info.csv", dtype=str)
    info = info[info["patientId"] != opacity[1]]
    info.to_csv(root / "stage_2_detailed_class_info.csv", index=False)
    records, rejections = _split(list(RsnaSource(root).scan()))
    assert Counter(r.label for r in records) == {"Normal": 38, "Pneumonia": 38}
    by_path = {r.path: r.reason for r in rejections}
    assert by_path[f"stage_2_train_images/{normal[0]}.dcm"] == (
        "class 'Normal' but Target '1' in stage_2_train_labels.csv"
    )
    assert by_path[f"stage_2_train_images/{opacity[0]}.dcm"] == (
        "class 'Lung Opacity' but Target '0' in stage_2_train_labels.csv"
    )
    assert by_path[f"stage_2_train_images/{normal[1]}.dcm"] == (
        "no row in stage_2_train_labels.csv"
    )
    assert by_path[f"stage_2_train_images/{opacity[1]}.dcm"] == (
        "no row in stage_2_detailed_class_info.csv"
    )


def test_layout_and_column_errors(shared_data: Path, kaggle_copy: tuple[Path, dict]) -> None:
    with pytest.raises(SourceLayoutError, match="does not look like rsna.*stage_2_train_images/"):
        RsnaSource(shared_data / "RSNAPDD/metadata_only_rows")  # CSVs only, not a Kaggle folder
    root, _ = kaggle_copy
    labels = pd.read_csv(root / "stage_2_train_labels.csv").drop(columns=["Target"])
    labels.to_csv(root / "stage_2_train_labels.csv", index=False)
    with pytest.raises(
        SourceLayoutError, match=r"stage_2_train_labels\.csv: missing column 'Target'"
    ):
        list(RsnaSource(root).scan())
