import csv
import shutil

import pytest

from cxrguide.config import SynthConfig
from cxrguide.data.sources import open_source
from cxrguide.data.sources.base import Rejection, SourceRecord
from cxrguide.data.synthetic import generate_dataset
from cxrguide.errors import SourceLayoutError


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "syn"
    cfg = SynthConfig(out=out, n=12, size=32, seed=5, styles=2, shortcut_test=3, workers=1)
    generate_dataset(cfg, progress=False)
    return out


def test_records_carry_style_as_site_and_the_fixed_split(synth_dir):
    src = open_source("synthetic", str(synth_dir))
    assert src.short_name == "SYN"
    items = list(src.scan())
    records = [r for r in items if isinstance(r, SourceRecord)]
    assert len(records) == 15 and len(items) == 15
    with open(synth_dir / "metadata.csv", newline="") as fh:
        rows = {r["image"]: r for r in csv.DictReader(fh)}
    for r in records:
        row = rows[r.path]
        assert r.file.is_file() and r.source == "synthetic" and r.label == row["label"]
        assert r.patient_id == f"synthetic:{row['patient_id']}" and r.view == row["view"]
        assert r.site == f"synthetic-style{row['style']}" and r.finding == r.label
        assert r.fixed_split == row["split_hint"]
    assert sum(r.fixed_split == "shortcut_test" for r in records) == 3
    assert {r.site for r in records} == {"synthetic-style0", "synthetic-style1"}


def test_missing_files_and_bad_rows_become_rejections(tmp_path, synth_dir):
    root = tmp_path / "copy"
    shutil.copytree(synth_dir, root)
    (root / "images" / "syn-000000.png").unlink()
    with open(root / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[1]["label"] = "Tuberculosis"
    rows[2]["view"] = "L"
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    items = list(open_source("synthetic", str(root)).scan())
    reasons = {r.path: r.reason for r in items if isinstance(r, Rejection)}
    assert reasons == {
        "images/syn-000000.png": "file not found",
        rows[1]["image"]: "unknown label 'Tuberculosis'",
        rows[2]["image"]: "unrecognised view 'L'",
    }
    assert sum(isinstance(r, SourceRecord) for r in items) == 12


def test_other_folders_are_refused(tmp_path):
    with pytest.raises(SourceLayoutError, match="does not look like synthetic"):
        open_source("synthetic", str(tmp_path))
