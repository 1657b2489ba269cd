"""End-to-end `prepare` on a small folder source written by the test."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from cxrguide.config import PrepareConfig
from cxrguide.data import prepare as prepare_mod
from cxrguide.data.sources import Rejection, Source, SourceRecord, register
from cxrguide.errors import CxrGuideError


@register
class CsvFolderSource(Source):
    """Test-only source: labels.csv (path,label,patient,site) beside the images."""

    kind = "testfolder"
    short_name = "TEST"
    expected_layout = "labels.csv"

    def looks_valid(self) -> bool:
        return (self.root / "labels.csv").exists()

    def scan(self) -> Iterator[SourceRecord | Rejection]:
        for row in pd.read_csv(self.root / "labels.csv", dtype=str).to_dict("records"):
            if not (self.root / row["path"]).exists():
                yield Rejection(self.kind, row["path"], "file not found")
                continue
            yield SourceRecord(self.kind, self.root, row["path"], row["label"],
                               f"t:{row['patient']}", "PA", site=row["site"])  # fmt: skip


def _image(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random((size, size)), sigma=6)
    return ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "img").mkdir(parents=True)
    rows = []
    k = 0
    for site in ("siteA", "siteB"):
        for label in ("Normal", "Pneumonia", "COVID-19"):
            for patient in range(14):
                for _ in range(1 + patient % 2):  # patients with 1 or 2 images
                    name = f"img/{k:04d}.png"
                    Image.fromarray(_image(k)).save(root / name)
                    rows.append((name, label, f"{site}-{label}-{patient}", site))
                    k += 1
    # an exact copy under another patient, a resized copy, a corrupt and an empty file
    shutil.copy(root / "img/0000.png", root / "img/copy.png")
    rows.append(("img/copy.png", "Normal", "other-patient", "siteA"))
    Image.fromarray(_image(999)).save(root / "img/other.png")
    rows.append(("img/other.png", "Normal", "other-patient", "siteA"))
    Image.fromarray(_image(5)).resize((80, 80)).save(root / "img/near.png")
    rows.append(("img/near.png", "Normal", "near-patient", "siteA"))
    (root / "img/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    rows.append(("img/corrupt.png", "COVID-19", "bad", "siteB"))
    (root / "img/empty.png").write_bytes(b"")
    rows.append(("img/empty.png", "COVID-19", "bad2", "siteB"))
    rows.append(("img/missing.png", "COVID-19", "bad3", "siteB"))
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "patient", "site"), *rows])
    return root


def _cfg(folder: Path, out: Path, **kw) -> PrepareConfig:
    base = dict(source=[f"testfolder={folder}"], out=out, size=64, seed=0, workers=1)
    return PrepareConfig(**{**base, **kw})


def test_prepare_writes_a_leakage_free_manifest(folder, tmp_path):
    result = prepare_mod.prepare(_cfg(folder, tmp_path / "out", workers=2))
    out = tmp_path / "out"
    m = pd.read_csv(out / "manifest.csv", dtype={"patient_id": str})
    assert set(prepare_mod.MANIFEST_COLUMNS) <= set(m.columns)
    assert result.n_images == len(m) == 127  # 2 sites x 3 classes x 21 images + other.png
    assert (m.groupby("patient_id").split.nunique() == 1).all()
    for (_site, _label), g in m.groupby(["site", "label"]):
        counts = g.split.value_counts()
        assert abs(counts["val"] - 2.1) <= 1 and abs(counts["test"] - 2.1) <= 1
    rejected = pd.read_csv(out / "rejected.csv")
    reasons = dict(zip(rejected.path, rejected.reason, strict=True))
    assert reasons["img/missing.png"] == "file not found"
    assert "empty" in reasons["img/empty.png"]
    assert "img/corrupt.png" in reasons
    dups = pd.read_csv(out / "duplicates.csv")
    assert set(dups.path) == {"img/copy.png", "img/near.png"}
    assert set(dups.match) == {"exact", "near"}
    review = pd.read_csv(out / "near_duplicates_review.csv")  # same labels, confirmed: nothing
    assert list(review.columns)[:4] == ["image_id", "label", "other_id", "other_label"]
    # the copy's patient is the same person (or shares an image): same split as the survivor
    split_of = dict(zip(m.path, m.split, strict=True))
    assert split_of["img/other.png"] == split_of["img/0000.png"]
    cache = np.load(out / "cache/images_64.npy")
    assert cache.shape == (len(m), 64, 64) and cache.dtype == np.uint8
    row = m.index[m.path == "img/0007.png"][0]
    expected = np.asarray(Image.fromarray(_image(7)).resize((64, 64), Image.Resampling.BOX))
    assert np.abs(cache[row].astype(int) - expected.astype(int)).mean() < 3


def test_same_seed_same_split_and_other_seed_differs(folder, tmp_path):
    a = prepare_mod.prepare(_cfg(folder, tmp_path / "a")).out
    b = prepare_mod.prepare(_cfg(folder, tmp_path / "b")).out
    c = prepare_mod.prepare(_cfg(folder, tmp_path / "c", seed=1)).out
    read = lambda p: pd.read_csv(p / "manifest.csv").split.tolist()  # noqa: E731
    assert read(a) == read(b)
    assert read(a) != read(c)
    assert (np.load(a / "cache/images_64.npy") == np.load(b / "cache/images_64.npy")).all()


def test_rerun_reuses_and_other_config_refuses(folder, tmp_path):
    out = tmp_path / "out"
    prepare_mod.prepare(_cfg(folder, out))
    assert prepare_mod.prepare(_cfg(folder, out, workers=2)).reused
    with pytest.raises(CxrGuideError, match="different config"):
        prepare_mod.prepare(_cfg(folder, out, size=96))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CxrGuideError, match="not empty"):
        prepare_mod.prepare(_cfg(folder, foreign))
    assert (foreign / "notes.txt").read_text() == "mine"


def test_killed_prepare_resumes_without_redecoding(folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = prepare_mod._decode
    calls = []

    def dying(task):
        calls.append(task[0])
        if len(calls) == 30:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_mod, "_decode", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare_mod.prepare(_cfg(folder, out))
    calls.clear()
    monkeypatch.setattr(prepare_mod, "_decode", lambda t: calls.append(t[0]) or real(t))
    result = prepare_mod.prepare(_cfg(folder, out))
    total = 127 + 4  # kept + copy, near, corrupt, empty (missing never reaches decoding)
    assert len(calls) == total - 29
    fresh = prepare_mod.prepare(_cfg(folder, tmp_path / "fresh"))
    assert result.split_counts == fresh.split_counts
    assert (out / "manifest.csv").read_text() == (fresh.out / "manifest.csv").read_text()


def test_summary_table_counts(folder, tmp_path):
    from cxrguide.data.summary import count_table, summary_text

    out = prepare_mod.prepare(_cfg(folder, tmp_path / "out")).out
    header, body = count_table(out)
    assert header == ["source", "class", "train", "val", "test", "total"]
    assert body[-1][-1] == "127" and len(body) == 7
    text = summary_text(out)
    assert "duplicates dropped: 2 (exact 1, near 1" in text
    assert "rejected: 3" in text
