from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrguide.config import LungsPrepareConfig
from cxrguide.data.imaging import fit_square
from cxrguide.errors import CxrGuideError
from cxrguide.lungs import lung_cache_path
from cxrguide.lungs.prepare import prepare_lungs
from lung_phantoms import write_phantoms


def _cfg(tmp_path, *sources, **kw):
    kw = {"out": tmp_path / "out", "size": 32, "workers": 1, "min_side": 32, **kw}
    return LungsPrepareConfig(source=list(sources), **kw)


@pytest.fixture
def phantoms(tmp_path):
    return write_phantoms(tmp_path / "ph", n=30, size=48)


def test_prepare_caches_aligned_masks_and_splits_by_patient(tmp_path, phantoms):
    (phantoms / "images" / "ph007.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = prepare_lungs(_cfg(tmp_path, f"v7={phantoms}", f"masks={phantoms}"))
    out = result.out
    man = pd.read_csv(out / "manifest.csv")
    rej = pd.read_csv(out / "rejected.csv")
    # every phantom came twice (v7 and masks): the masks copy is a duplicate; ph007 is unreadable
    assert result.n_images == len(man) == 29 and set(man.source) == {"v7"}
    assert (rej.stage == "duplicate").sum() == 29 and (rej.stage == "image").sum() == 2
    assert man.sided.all() and list(man.cache_index) == list(range(29))
    assert man.groupby("patient_id").split.nunique().max() == 1
    assert set(man.split) == {"train", "val", "test"} and (man.split == "train").sum() >= 20
    images = np.load(out / "cache/images_32.npy")
    masks = np.load(lung_cache_path(out, 32))
    assert images.shape == masks.shape == (29, 32, 32) and set(np.unique(masks)) == {0, 255}
    for row in man.itertuples():
        published = np.asarray(Image.open(phantoms / "masks" / f"{row.path[7:]}"))
        expected = fit_square((published > 0).astype(np.uint8) * 255, 32, mask=True)
        assert np.array_equal(masks[row.cache_index], expected)  # tall films letterboxed alike
        lung = masks[row.cache_index] > 0
        img = images[row.cache_index].astype(float)
        assert img[lung].mean() < img[~lung & (img > 60)].mean()  # the dark lungs are under it
    assert (man.height > man.width).sum() == 6


def test_rerun_is_reused_and_a_changed_config_refused(tmp_path, phantoms):
    first = prepare_lungs(_cfg(tmp_path, f"masks={phantoms}"))
    again = prepare_lungs(_cfg(tmp_path, f"masks={phantoms}"))
    assert again.reused and again.n_images == first.n_images == 30
    with pytest.raises(CxrGuideError, match="different config"):
        prepare_lungs(_cfg(tmp_path, f"masks={phantoms}", seed=1))


def test_ignore_regions_can_be_cut_out(tmp_path):
    root = write_phantoms(tmp_path / "ph", n=10, size=48)
    for f in (root / "annotations").glob("*.json"):
        doc = json.loads(f.read_text())
        box = [{"x": x, "y": y} for x, y in ((8, 20), (18, 20), (18, 30), (8, 30))]
        doc["annotations"].append({"name": "Ignore", "polygon": {"path": box}})
        f.write_text(json.dumps(doc))
    keep = prepare_lungs(_cfg(tmp_path, f"v7={root}"))
    cut = prepare_lungs(_cfg(tmp_path, f"v7={root}", out=tmp_path / "cut", ignore="background"))
    a, b = np.load(lung_cache_path(keep.out, 32)), np.load(lung_cache_path(cut.out, 32))
    assert (b <= a).all() and a.sum() > b.sum()
    assert pd.read_csv(keep.out / "manifest.csv").ignore_fraction.gt(0).all()


def test_errors_name_the_problem(tmp_path, phantoms):
    with pytest.raises(CxrGuideError, match="source"):
        prepare_lungs(_cfg(tmp_path))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.txt").write_text("x")
    with pytest.raises(CxrGuideError, match="not empty"):
        prepare_lungs(_cfg(tmp_path, f"masks={phantoms}"))


def test_real_v7_sample(tmp_path, shared_data):
    root = shared_data / "V7" / "covid-19-xray-dataset"
    result = prepare_lungs(_cfg(tmp_path, f"v7={root}"))
    man = pd.read_csv(result.out / "manifest.csv")
    rej = pd.read_csv(result.out / "rejected.csv")
    assert result.n_images == 58 and rej.reason.str.contains("no lung polygon").sum() == 2
    assert man.groupby("patient_id").split.nunique().max() == 1
    assert man.lung_fraction.between(0.05, 0.7).all()
    masks = np.load(lung_cache_path(result.out, 32))
    assert masks.reshape(58, -1).astype(bool).mean(1).min() > 0.03
