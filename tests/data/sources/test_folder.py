"""``folder`` sources (ImageFolder): naming, labels, rejections, bad layouts; the registry."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from byo_testutils import film, image_folder
from cxrguide.cli import build_parser
from cxrguide.data.sources import Rejection, SourceOptions, SourceRecord, open_source, open_sources
from cxrguide.data.sources.folder import FolderSource, derived_name
from cxrguide.errors import ConfigError, SourceLayoutError
from test_readme_examples import readme_commands


def _split(items):
    return (
        [i for i in items if isinstance(i, SourceRecord)],
        [i for i in items if isinstance(i, Rejection)],
    )


def test_folder_is_named_after_itself_and_maps_labels(tmp_path):
    root = image_folder(
        tmp_path / "Kermany pediatric (CXR)", {"NORMAL": 2, "PNEUMONIA": 1, "virus": 1, "TB": 1}
    )
    film(root / "NORMAL" / "nested" / "deep.png", seed=50)
    film(root / "loose.png", seed=51)  # beside the label folders
    (root / "labels.csv").write_text("file,label\n")  # not a film: ignored
    (root / "NORMAL" / ".DS_Store").write_text("x")  # hidden: ignored
    (root / ".cache").mkdir()
    src = open_source("folder", str(root))
    assert isinstance(src, FolderSource) and src.name == "Kermany-pediatric-CXR"
    records, rejections = _split(list(src.scan()))
    assert {(r.path, r.label, r.finding) for r in records} == {
        ("NORMAL/normal-0.png", "Normal", "NORMAL"),
        ("NORMAL/normal-1.png", "Normal", "NORMAL"),
        ("NORMAL/nested/deep.png", "Normal", "NORMAL"),
        ("PNEUMONIA/pneumonia-0.png", "Pneumonia", "PNEUMONIA"),
        ("virus/virus-0.png", "Pneumonia", "virus"),
    }
    assert {r.source for r in records} == {"Kermany-pediatric-CXR"}
    assert records[0].patient_id == "Kermany-pediatric-CXR:normal-0" and records[0].view == ""
    assert {(r.path, r.reason) for r in rejections} == {
        ("TB/tb-0.png", "unmapped label 'TB' (not in the label map; see --label-map)"),
        ("loose.png", "not in a label subfolder"),
    }
    assert {r.source for r in rejections} == {"Kermany-pediatric-CXR"}


def test_explicit_name_and_user_label_map(tmp_path):
    root = image_folder(tmp_path / "set", {"healthy": 1, "virus": 1})
    opts = SourceOptions(label_map={"healthy": "Normal", "virus": None})
    src = open_source("folder", str(root), name="kids", options=opts)
    records, rejections = _split(list(src.scan()))
    assert [(r.source, r.label, r.patient_id) for r in records] == [
        ("kids", "Normal", "kids:healthy-0")
    ]
    assert [r.reason for r in rejections] == ["label 'virus' excluded by the label map (null)"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda r: r.mkdir(), "no label subfolders"),
        (lambda r: film(r / "a.png") and None, "no label subfolders"),
        (
            lambda r: image_folder(r, {"siteA": 1, "siteB": 1}),
            r"none of its subfolders \(siteA, siteB\) is a label of the label map",
        ),
        (lambda r: r.with_name("elsewhere").mkdir(), "folder source not found"),
    ],
    ids=["empty", "files-only", "no-label-folder", "missing"],
)
def test_bad_folder_layouts_are_one_line_errors(tmp_path, make, match):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(SourceLayoutError, match=match) as err:
        open_source("folder", str(root))
    assert "\n" not in str(err.value)


def test_derived_names_are_safe():
    assert derived_name(Path("/x/NIH-ChestX-ray8/")) == "NIH-ChestX-ray8"
    assert derived_name(Path("/x/my data (2)")) == "my-data-2"
    assert derived_name(Path("/x/ü")) == "source"


def test_registry_refuses_clashing_names_and_names_for_study_kinds(tmp_path):
    a = image_folder(tmp_path / "a" / "set", {"NORMAL": 1})
    b = image_folder(tmp_path / "b" / "set", {"COVID": 1})
    with pytest.raises(ConfigError, match="name 'set' is given twice"):
        open_sources([f"folder={a}", f"folder={b}"])
    named = open_sources([f"folder={a}", f"folder:set2={b}"])
    assert [s.name for s in named] == ["set", "set2"]
    with pytest.raises(ConfigError, match="is given twice"):
        open_sources([f"folder={a}", f"folder:x={a}/"])
    with pytest.raises(ConfigError, match="name 'rsna' of folder:rsna=.* is a source kind's"):
        open_sources([f"folder:rsna={a}"])
    with pytest.raises(ConfigError, match="ieee8023 takes no NAME"):
        open_sources([f"ieee8023:mine={a}"])
    with pytest.raises(ConfigError, match="radiography takes no NAME"):
        open_sources([f"radiography:mine={a}"])
    with pytest.raises(SourceLayoutError, match="unknown source kind 'imagefolder'"):
        open_sources([f"imagefolder={a}"])
    with pytest.raises(ConfigError, match="give at least one --source"):
        open_sources([])


def test_docs_examples_parse_with_the_real_parser():
    docs = Path(__file__).resolve().parents[3] / "docs" / "sources.md"
    commands = readme_commands(docs)
    assert len(commands) >= 4 and any("--label-map" in c for c in commands)
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert callable(args.func)
