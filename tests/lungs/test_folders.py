from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrguide.data.sources.base import Rejection
from cxrguide.errors import ImageReadError, SourceLayoutError
from cxrguide.lungs import LEFT, LUNG, RIGHT, LungRecord, load_mask, open_lung_source
from cxrguide.lungs.folders import MaskFolderSource, read_mask_file
from lung_phantoms import write_phantoms


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _split(items):
    items = list(items)
    recs = [i for i in items if isinstance(i, LungRecord)]
    return recs, {r.path: r.reason for r in items if isinstance(r, Rejection)}


def test_synth_layout_uses_metadata_patients(tmp_path):
    root = write_phantoms(tmp_path / "ph", n=4, size=48)
    recs, rejected = _split(MaskFolderSource(root).scan())
    assert not rejected and [r.patient_id for r in recs] == [
        "masks:0",
        "masks:0",
        "masks:1",
        "masks:1",
    ]
    published = np.asarray(Image.open(root / "masks/ph000.png"))
    mask = load_mask(recs[0], 48, 48)
    assert np.array_equal(mask.lung, published > 0)  # 128 and 255 are both lung
    assert (mask.labels[mask.lung] == LUNG).all() and not mask.sided


def test_shenzhen_naming_and_unmatched_files(tmp_path):
    img = np.full((40, 50), 90, np.uint8)
    lung = np.zeros((40, 50), np.uint8)
    lung[5:30, 5:20] = 255
    _save(tmp_path / "CXR_png/CHNCXR_0001_0.png", img)
    _save(tmp_path / "CXR_png/CHNCXR_0002_1.png", img)  # no mask
    _save(tmp_path / "masks/CHNCXR_0001_0_mask.png", lung)
    _save(tmp_path / "masks/CHNCXR_0009_0_mask.png", lung)  # no image
    recs, rejected = _split(MaskFolderSource(tmp_path).scan())
    assert [r.path for r in recs] == ["CXR_png/CHNCXR_0001_0.png"]
    assert recs[0].patient_id == "masks:CHNCXR_0001_0"
    assert "no mask file" in rejected["CXR_png/CHNCXR_0002_1.png"]
    assert "without a matching image" in rejected["masks/CHNCXR_0009_0_mask.png"]
    assert load_mask(recs[0], 40, 50).lung.sum() == 25 * 15


def test_montgomery_left_and_right_masks_keep_their_side(tmp_path):
    _save(tmp_path / "CXR_png/MCUCXR_0001_0.png", np.zeros((40, 50), np.uint8))
    right, left = np.zeros((40, 50), np.uint8), np.zeros((40, 50), np.uint8)
    right[5:30, 3:20] = 1  # 0/1 masks
    left[5:30, 28:45] = 1
    _save(tmp_path / "ManualMask/rightMask/MCUCXR_0001_0.png", right)
    _save(tmp_path / "ManualMask/leftMask/MCUCXR_0001_0.png", left)
    (rec,) = _split(open_lung_source("masks", tmp_path).scan())[0]
    mask = load_mask(rec, 40, 50)
    assert mask.sided
    assert np.array_equal(mask.labels == RIGHT, right > 0)
    assert np.array_equal(mask.labels == LEFT, left > 0)


def test_mask_size_must_match_the_image_aspect(tmp_path):
    small = np.zeros((20, 25), np.uint8)
    small[2:10, 2:10] = 255
    _save(tmp_path / "m.png", small)
    up = read_mask_file(tmp_path / "m.png", 40, 50)  # same aspect: rescaled
    assert up.shape == (40, 50) and up.sum() == 16 * 16
    with pytest.raises(ImageReadError, match="mask is 25x20 but the image is 50x50"):
        read_mask_file(tmp_path / "m.png", 50, 50)


def test_folder_without_pairs_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SourceLayoutError, match="image \\+ mask folder"):
        MaskFolderSource(tmp_path)
