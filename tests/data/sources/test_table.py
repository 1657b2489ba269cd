"""``table`` sources (a CSV of films): columns, naming, every row rejection, bad tables."""

from __future__ import annotations

import pytest

from byo_testutils import film, write_csv
from cxrguide.data.sources import Rejection, SourceRecord, open_source
from cxrguide.data.sources.table import TableSource
from cxrguide.errors import SourceLayoutError


def test_table_rows_become_records_or_rejections_with_reasons(tmp_path):
    root = tmp_path / "COVID CXNet"
    for k, name in enumerate(["a.png", "b.PNG", "c.png", "d.png", "e.png", "f.png", "g.png"]):
        film(root / "imgs" / name, seed=k)
    film(tmp_path / "secret.png")
    header = ["File", "label", "patient_id", "view", "site", "extra"]
    rows = [
        ["imgs/a.png", "COVID-19", "p1", "PA", "hospA", "x"],
        ["imgs/b.png", "covid", "p1", "AP Supine", "", ""],  # .PNG on disk: found
        ["imgs\\c.png", "No Finding", "", "", "", ""],  # Windows separator
        ["./imgs/d.png", "virus", "p9", "", "", ""],
        ["imgs/a.png", "COVID-19", "p1", "PA", "", ""],  # listed again
        ["", "Normal", "", "", "", ""],
        ["../secret.png", "Normal", "", "", "", ""],
        ["/etc/hosts", "Normal", "", "", "", ""],
        ["imgs/e.png", "Tuberculosis", "", "", "", ""],
        ["imgs/f.png", "", "", "", "", ""],
        ["imgs/g.png", "Normal", "", "L", "", ""],
        ["imgs/missing.png", "Normal", "", "", "", ""],
    ]
    src = open_source("table", str(write_csv(root / "labels.csv", header, rows)))
    assert isinstance(src, TableSource) and src.name == "COVID-CXNet" and src.root == root
    items = list(src.scan())
    records = [i for i in items if isinstance(i, SourceRecord)]
    rejected = {i.path: i.reason for i in items if isinstance(i, Rejection)}
    assert [(r.path, r.label, r.patient_id, r.view, r.site, r.finding) for r in records] == [
        ("imgs/a.png", "COVID-19", "COVID-CXNet:p1", "PA", "hospA", "COVID-19"),
        ("imgs/b.PNG", "COVID-19", "COVID-CXNet:p1", "AP", "", "covid"),
        ("imgs/c.png", "Normal", "COVID-CXNet:c", "", "", "No Finding"),
        ("imgs/d.png", "Pneumonia", "COVID-CXNet:p9", "", "", "virus"),
    ]
    assert records[0].stratum_site == "hospA" and records[1].stratum_site == "COVID-CXNet"
    assert rejected == {
        "imgs/a.png": "listed again (first on line 2 of labels.csv)",
        "labels.csv line 7": "blank file cell",
        "../secret.png": "file '../secret.png' lies outside the table's folder",
        "/etc/hosts": "file '/etc/hosts' lies outside the table's folder",
        "imgs/e.png": "unmapped label 'Tuberculosis' (not in the label map; see --label-map)",
        "imgs/f.png": "blank label",
        "imgs/g.png": "lateral view 'L'",
        "imgs/missing.png": "file not found",
    }
    assert len(items) == len(rows)  # every row accounted for


def test_path_column_explicit_name_and_stem_patients(tmp_path):
    film(tmp_path / "x" / "NORMAL" / "IM-1.png")
    csv_path = write_csv(
        tmp_path / "x" / "list.csv", ["path", "label"], [["NORMAL/IM-1.png", "NORMAL"]]
    )
    src = open_source("table", str(csv_path), name="kids")
    (rec,) = src.scan()
    assert (rec.source, rec.path, rec.patient_id, rec.label) == (
        "kids",
        "NORMAL/IM-1.png",
        "kids:IM-1",
        "Normal",
    )


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (["file", "class3"], r"no label column \(a table needs .*; found: file, class3\)"),
        (["image", "label"], r"no file or path column \(a table needs .*found: image, label\)"),
    ],
)
def test_tables_without_label_or_file_column_are_one_line_errors(tmp_path, header, match):
    path = write_csv(tmp_path / "t.csv", header, [["a.png", "Normal"]])
    with pytest.raises(SourceLayoutError, match=match) as err:
        open_source("table", str(path))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_table_given_a_folder_or_a_missing_or_broken_csv(tmp_path):
    with pytest.raises(SourceLayoutError, match="is a folder; a table source takes its CSV"):
        open_source("table", str(tmp_path))
    with pytest.raises(SourceLayoutError, match="table CSV not found"):
        open_source("table", str(tmp_path / "none.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SourceLayoutError, match="cannot parse CSV"):
        open_source("table", str(tmp_path / "empty.csv"))
