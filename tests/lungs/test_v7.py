from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from cxrguide.config import SynthConfig
from cxrguide.data.sources.base import Rejection
from cxrguide.data.synthetic.generate import generate_dataset
from cxrguide.errors import SourceLayoutError
from cxrguide.lungs import LEFT, LUNG, RIGHT, LungRecord, load_mask, open_lung_source
from cxrguide.lungs.v7 import (
    NotDarwinError,
    V7Source,
    darwin_mask,
    parse_darwin,
    rasterize,
    read_annotation,
)
from lung_phantoms import write_phantoms


def _pts(*xy):
    return [{"x": x, "y": y} for x, y in xy]


SQUARE = _pts((2, 2), (11, 2), (11, 11), (2, 11))  # 10 x 10 pixels with the outline
HOLE = _pts((5, 5), (8, 5), (8, 8), (5, 8))  # 4 x 4


def _doc(*annotations, width=20, height=16):
    return {
        "image": {
            "width": width,
            "height": height,
            "filename": "a.png",
            "original_filename": "orig-7.jpg",
        },
        "annotations": list(annotations),
    }


def test_rasterize_fills_polygon_with_its_outline():
    mask = rasterize([np.array([[2, 2], [11, 2], [11, 11], [2, 11]], float)], 16, 20)
    assert mask.sum() == 100 and mask[2:12, 2:12].all()


def test_complex_polygon_holes_are_even_odd_and_sides_kept():
    doc = _doc(
        {"name": "Right Lung", "complex_polygon": {"path": [SQUARE, HOLE]}},
        {"name": "Left Lung", "polygon": {"path": _pts((14, 2), (17, 2), (17, 5), (14, 5))}},
        {"name": "Ignore", "polygon": {"path": _pts((3, 3), (4, 3), (4, 4), (3, 4))}},
        {"name": "PatientID:42", "tag": {}},
        {"name": "View/PA", "tag": {}},
    )
    ann = parse_darwin(doc)
    assert ann.patient_tag == "42" and "View/PA" in ann.tags
    mask = darwin_mask(ann)
    assert (mask.labels == RIGHT).sum() == 100 - 16
    assert not mask.lung[5:9, 5:9].any()  # the hole
    assert (mask.labels == LEFT).sum() == 16 and mask.sided
    assert mask.ignore.sum() == 4 and mask.lung[mask.ignore].all()


def test_darwin_2_paths_and_unsided_lung():
    doc = {
        "version": "2.0",
        "item": {
            "name": "b.png",
            "slots": [{"width": 20, "height": 16, "source_files": [{"file_name": "b.png"}]}],
        },
        "annotations": [{"name": "Lung", "polygon": {"paths": [SQUARE]}}],
    }
    ann = parse_darwin(doc)
    assert (ann.filename, ann.width, ann.height) == ("b.png", 20, 16)
    mask = darwin_mask(ann)
    assert (mask.labels == LUNG).sum() == 100 and not mask.sided


def test_mask_is_scaled_to_a_resized_image():
    mask = darwin_mask(parse_darwin(_doc({"name": "Lung", "polygon": {"path": SQUARE}})), 32, 40)
    assert mask.labels.shape == (32, 40)
    assert 340 <= mask.lung.sum() <= 440  # 20 x 20 after doubling, +- the outline


@pytest.mark.parametrize(
    "doc", [{"images": [], "annotations": [], "categories": []}, {"annotations": {}}, [1, 2]]
)
def test_non_darwin_json_is_refused(doc):
    with pytest.raises(NotDarwinError):
        parse_darwin(doc)


def test_phantom_masks_match_the_json(tmp_path):
    root = write_phantoms(tmp_path / "ph", n=6, size=48)
    records = [r for r in V7Source(root).scan() if isinstance(r, LungRecord)]
    assert len(records) == 6
    assert records[0].patient_id == "v7:0" and records[0].size == (48, 48)
    for r in records:
        published = np.asarray(Image.open(root / "masks" / f"{r.file.stem}.png"))
        mask = load_mask(r, *published.shape)
        assert np.array_equal(mask.labels == RIGHT, published == 128)
        assert np.array_equal(mask.labels == LEFT, published == 255)


def test_scan_reports_missing_lungs_images_and_bad_json(tmp_path):
    root = write_phantoms(tmp_path / "ph", n=3, size=48)
    (root / "annotations" / "tags.json").write_text(json.dumps(_doc({"name": "View/L", "tag": {}})))
    (root / "annotations" / "broken.json").write_text("{not json")
    (root / "images" / "ph002.png").unlink()
    items = list(V7Source(root).scan())
    reasons = {r.path: r.reason for r in items if isinstance(r, Rejection)}
    assert len([r for r in items if isinstance(r, LungRecord)]) == 2
    assert "no lung polygon" in reasons["annotations/tags.json"]
    assert "View/L" in reasons["annotations/tags.json"]
    assert "not valid JSON" in reasons["annotations/broken.json"]
    assert "image file not found" in reasons["annotations/ph002.json"]


def test_zipped_annotations_and_fallback_patient_id(tmp_path):
    root = tmp_path / "v7"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(root / "images" / "a.png")
    with zipfile.ZipFile(root / "annotations" / "set.zip", "w") as zf:
        zf.writestr("1.json", json.dumps(_doc({"name": "Lung", "polygon": {"path": SQUARE}})))
    (record,) = list(V7Source(root).scan())
    assert record.annotation == ("annotations/set.zip::1.json",)
    assert record.patient_id == "v7:orig-7"  # no PatientID tag: original file name
    assert read_annotation(root, record.annotation[0]).lungs


def test_layout_errors(tmp_path):
    with pytest.raises(SourceLayoutError, match="not found"):
        open_lung_source("v7", tmp_path / "nope")
    with pytest.raises(SourceLayoutError, match="does not look like v7"):
        open_lung_source("v7", tmp_path)
    with pytest.raises(SourceLayoutError, match="unknown lung source"):
        open_lung_source("coco", tmp_path)


def test_real_v7_sample_matches_published_semantic_masks(shared_data):
    """Rasterised lung polygons minus Ignore vs the published 255 pixels (measured: min 0.9986)."""
    root = shared_data / "V7" / "covid-19-xray-dataset"
    items = list(V7Source(root).scan())
    records = [r for r in items if isinstance(r, LungRecord)]
    rejected = [r for r in items if isinstance(r, Rejection)]
    assert len(records) == 58
    assert sum("no lung polygon" in r.reason for r in rejected) == 2
    assert all(re.fullmatch(r"v7:\d+[a-z]?", r.patient_id) for r in records)  # the tags
    dice = []
    for r in records:
        member = r.annotation[0].split("::")[1]
        published = np.asarray(
            Image.open(
                root / "annotations/all-images-semantic-masks" / member.replace("json", "png")
            )
        )
        mask = load_mask(r, *published.shape)
        ours, theirs = mask.lung & ~mask.ignore, published == 255
        dice.append(2 * (ours & theirs).sum() / (ours.sum() + theirs.sum()))
        assert not mask.sided  # the published set names both polygons "Lung"
    assert min(dice) >= 0.995 and np.mean(dice) >= 0.999


def test_synth_output_reads_as_v7_with_sides(tmp_path):
    out = tmp_path / "syn"
    generate_dataset(SynthConfig(out=out, n=6, size=64, workers=1, shortcut_test=0), False)
    records = [r for r in V7Source(out).scan() if isinstance(r, LungRecord)]
    meta = {
        row.split(",")[0]: row.split(",")[6]
        for row in (out / "metadata.csv").read_text().split()[1:]
    }
    assert len(records) == 6
    for r in records:
        published = np.asarray(Image.open(out / "masks" / r.file.name))
        mask = load_mask(r, *published.shape)
        assert mask.sided
        assert np.array_equal(mask.labels == RIGHT, published == 128)
        assert np.array_equal(mask.labels == LEFT, published == 255)
        assert r.patient_id == f"v7:{meta[r.file.stem]}"
