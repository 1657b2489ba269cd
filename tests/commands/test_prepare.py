"""`cxrguide prepare` with folder/table sources, end to end: names in the manifest, rejections
with reasons, patients from the table, the label map in the config, one-line errors (exit 2);
and the same on a subset of the real films in ../shared/external-cxr."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from byo_testutils import film, image_folder, write_csv
from cxrguide.cli import main
from cxrguide.data.sources import SourceRecord, open_sources

EXTERNAL = Path(
    os.environ.get(
        "CXRGUIDE_EXTERNAL_CXR", Path(__file__).resolve().parents[3] / "shared/external-cxr"
    )
)
PREP = ["--size", "32", "--seed", "0", "--workers", "1"]


@pytest.fixture
def byo(tmp_path: Path) -> dict[str, Path]:
    """Two ImageFolder sources with the same folder name, and a table with patient ids."""
    a = image_folder(tmp_path / "a" / "kids", {"NORMAL": 6, "PNEUMONIA": 6, "TB": 2}, seed=1)
    b = image_folder(tmp_path / "b" / "kids", {"No_findings": 6, "Pneumonia": 6}, seed=2)
    (a / "NORMAL" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    (a / "PNEUMONIA" / "notes.txt").write_text("reader's notes")
    film(a / "NORMAL" / "tiny.png", seed=7, side=20)
    rows = []
    for k in range(12):
        film(tmp_path / "t" / "films" / f"{k}.png", seed=300 + k)
        rows.append([f"films/{k}.png", "COVID-19", f"p{k // 3}"])  # 3 films per patient
    rows.append(["films/none.png", "COVID-19", "p9"])
    table = write_csv(tmp_path / "t" / "labels.csv", ["file", "label", "patient_id"], rows)
    return {"a": a, "b": b, "table": table}


def test_folder_and_table_sources_prepare_and_audit(byo, tmp_path, capsys):
    out = tmp_path / "prep"
    argv = [
        "prepare",
        "--source",
        f"folder={byo['a']}",
        "--source",
        f"folder:kids-b={byo['b']}",
        "--source",
        f"table:covid={byo['table']}",
        "--out",
        str(out),
        *PREP,
    ]
    assert main(argv) == 0
    m = pd.read_csv(out / "manifest.csv", dtype=str)
    assert m.groupby("source").size().to_dict() == {"covid": 12, "kids": 12, "kids-b": 12}
    assert set(m[m.source == "kids-b"].finding) == {"No_findings", "Pneumonia"}
    covid = m[m.source == "covid"]
    assert set(covid.patient_id) == {f"covid:p{k}" for k in range(4)}
    assert (covid.groupby("patient_id").split.nunique() == 1).all()  # a patient, one split
    assert set(m[m.source == "kids"].patient_id) >= {"kids:normal-0", "kids:pneumonia-5"}
    rejected = pd.read_csv(out / "rejected.csv")
    reasons = {(r.source, r.path): (r.stage, r.reason) for r in rejected.itertuples()}
    assert reasons[("kids", "TB/tb-0.png")] == (
        "metadata",
        "unmapped label 'TB' (not in the label map; see --label-map)",
    )
    assert reasons[("covid", "films/none.png")] == ("metadata", "file not found")
    assert reasons[("kids", "NORMAL/broken.png")][0] == "image"
    assert reasons[("kids", "PNEUMONIA/notes.txt")][0] == "image"
    assert "20" in reasons[("kids", "NORMAL/tiny.png")][1]  # below --min-side 64
    assert len(rejected) == 6
    assert main(["audit", str(out), "--out", str(tmp_path / "audit")]) == 0
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    codes = {(w["code"], w.get("source")) for w in audit["warnings"]}
    assert ("single_class_source", "covid") in codes
    assert "source_predicts_class" in {c for c, _ in codes}
    stats = audit.get("image_statistics", {})
    if stats:  # the audit found each named source's folder again
        assert {s: v["formats"] for s, v in stats.items()}.keys() >= {"covid", "kids", "kids-b"}


def test_label_map_file_is_applied_and_a_changed_map_is_a_changed_config(byo, tmp_path, capsys):
    out, label_map = tmp_path / "prep", tmp_path / "map.yaml"
    label_map.write_text("TB: Pneumonia\nPNEUMONIA: null\n")
    argv = [
        "prepare",
        "--source",
        f"folder={byo['a']}",
        "--label-map",
        str(label_map),
        "--out",
        str(out),
        *PREP,
    ]
    assert main(argv) == 0
    m = pd.read_csv(out / "manifest.csv")
    assert m.groupby("finding").label.first().to_dict() == {"NORMAL": "Normal", "TB": "Pneumonia"}
    saved = yaml.safe_load((out / "prepare_config.yaml").read_text())
    assert saved["label_map"] == {"TB": "Pneumonia", "PNEUMONIA": None}
    rejected = pd.read_csv(out / "rejected.csv")
    assert (rejected.reason == "label 'PNEUMONIA' excluded by the label map (null)").sum() == 7
    assert main(argv) == 0 and "already prepared (reused)" in capsys.readouterr().out
    label_map.write_text("TB: COVID-19\n")
    assert main(argv) == 2
    assert "prepared with a different config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("folder={empty}", "{empty}: no label subfolders"),
        ("table={nolabel}", "{nolabel}: no label column"),
        ("table={nofile}", "{nofile}: no file or path column"),
        ("folder:bad name={empty}", "source: name 'bad name'"),
    ],
)
def test_bad_sources_are_one_line_and_exit_2(tmp_path, capsys, spec, message):
    paths = {
        "empty": tmp_path / "empty",
        "nolabel": write_csv(tmp_path / "a.csv", ["file", "class"], [["x.png", "Normal"]]),
        "nofile": write_csv(tmp_path / "b.csv", ["image", "label"], [["x.png", "Normal"]]),
    }
    paths["empty"].mkdir()
    argv = ["prepare", "--source", spec.format(**paths), "--out", str(tmp_path / "o"), *PREP]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(**paths) in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written before the sources open


def test_bad_label_map_is_one_line_and_exit_2(byo, tmp_path, capsys):
    (tmp_path / "map.yaml").write_text("TB: tuberculosis\n")
    argv = [
        "prepare",
        "--source",
        f"folder={byo['a']}",
        "--label-map",
        str(tmp_path / "map.yaml"),
        "--out",
        str(tmp_path / "o"),
        *PREP,
    ]
    assert main(argv) == 2
    assert "'TB' maps to 'tuberculosis', not one of Normal" in capsys.readouterr().err


# ---- the real films -----------------------------------------------------------------------------
ORIGINS = {
    "Kermany-pediatric-CXR": 743,
    "NIH-ChestX-ray8": 560,
    "HMH-COVID19": 123,
    "COVID-CXNet": 351,
}


@pytest.fixture(scope="module")
def external() -> Path:
    if not all((EXTERNAL / o / "labels.csv").is_file() for o in ORIGINS):
        pytest.skip(f"real films not found at {EXTERNAL} (set CXRGUIDE_EXTERNAL_CXR)")
    return EXTERNAL


def test_real_external_films_scan_and_a_subset_prepares(external, tmp_path, capsys):
    """Every origin as published scans to its SOURCES.md count with the labels its labels.csv
    states (class3); a 6-per-class copy (HMH as a table with its patient ids) prepares into 4
    named sources that the audit calls confounded."""

    specs = [f"folder={external / o}" for o in ORIGINS if o != "COVID-CXNet"]
    specs.append(f"table:cxnet={external / 'COVID-CXNet/labels.csv'}")
    class3 = {"normal": "Normal", "pneumonia": "Pneumonia", "covid": "COVID-19"}
    sub = tmp_path / "sub"
    for src, origin in zip(open_sources(specs), ORIGINS, strict=True):
        items = list(src.scan())
        assert len(items) == ORIGINS[origin] and all(isinstance(i, SourceRecord) for i in items)
        truth = pd.read_csv(external / origin / "labels.csv", dtype=str).set_index("file")
        assert all(class3[truth.loc[r.path, "class3"]] == r.label for r in items)
        picked = pd.concat([g.head(6) for _, g in truth.reset_index().groupby("class3")])
        for rel in picked.file:
            (sub / origin / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(external / origin / rel, sub / origin / rel)
        if origin == "HMH-COVID19":
            picked[["file", "label", "patient_id"]].to_csv(sub / origin / "labels.csv", index=False)
    out = tmp_path / "prep"
    argv = [
        "prepare",
        "--source",
        f"folder={sub / 'Kermany-pediatric-CXR'}",
        "--source",
        f"folder={sub / 'NIH-ChestX-ray8'}",
        "--source",
        f"table={sub / 'HMH-COVID19/labels.csv'}",
        "--source",
        f"folder:cxnet={sub / 'COVID-CXNet'}",
        "--out",
        str(out),
        *PREP,
    ]
    assert main(argv) == 0
    m = pd.read_csv(out / "manifest.csv", dtype=str)
    assert m.groupby("source").size().to_dict() == {
        "HMH-COVID19": 6,
        "Kermany-pediatric-CXR": 12,
        "NIH-ChestX-ray8": 12,
        "cxnet": 6,
    }
    hmh = m[m.source == "HMH-COVID19"]
    assert hmh.patient_id.str.startswith("HMH-COVID19:").all()
    assert (hmh.groupby("patient_id").split.nunique() == 1).all()
    assert main(["audit", str(out), "--out", str(tmp_path / "audit")]) == 0
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert "source_predicts_class" in {w["code"] for w in audit["warnings"]}
