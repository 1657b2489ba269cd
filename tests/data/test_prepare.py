"""End-to-end `prepare` on a small folder source written by the test."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pydicom.data import get_testdata_file
from scipy.ndimage import gaussian_filter

from cxr_testutils import chest_like, dicom_film, jpeg_dicom
from cxrguide.cli import main
from cxrguide.config import PrepareConfig, SynthConfig
from cxrguide.data import cache, decode_pool
from cxrguide.data import prepare as prepare_mod
from cxrguide.data.datasets import Prepared
from cxrguide.data.sources import Rejection, Source, SourceRecord, register
from cxrguide.data.summary import count_table, summary_text
from cxrguide.data.synthetic.generate import generate_dataset
from cxrguide.data.workers import fork_pool
from cxrguide.errors import ConfigError, CxrGuideError


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
            yield SourceRecord(
                self.kind,
                self.root,
                row["path"],
                row["label"],
                f"t:{row['patient']}",
                "PA",
                site=row["site"],
            )


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
    real = decode_pool.decode
    calls = []

    def dying(task):
        calls.append(task[0])
        if len(calls) == 30:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(decode_pool, "decode", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare_mod.prepare(_cfg(folder, out))
    calls.clear()
    monkeypatch.setattr(decode_pool, "decode", lambda t: calls.append(t[0]) or real(t))
    result = prepare_mod.prepare(_cfg(folder, out))
    total = 127 + 4  # kept + copy, near, corrupt, empty (missing never reaches decoding)
    assert len(calls) == total - 29
    fresh = prepare_mod.prepare(_cfg(folder, tmp_path / "fresh"))
    assert result.split_counts == fresh.split_counts
    assert (out / "manifest.csv").read_text() == (fresh.out / "manifest.csv").read_text()


def test_summary_table_counts(folder, tmp_path):
    out = prepare_mod.prepare(_cfg(folder, tmp_path / "out")).out
    header, body = count_table(out)
    assert header == ["source", "class", "train", "val", "test", "total"]
    assert body[-1][-1] == "127" and len(body) == 7
    text = summary_text(out)
    assert "duplicates dropped: 2 (exact 1, near 1" in text
    assert "rejected: 3" in text


# ---- crash safety: a kill after any step, then the same command again --------------------------
KILL_POINTS = [  # (object holding the step, its name, which call): prepare's steps in order
    (prepare_mod, "save_yaml", 1),
    (decode_pool, "decode_all", 1),
    (prepare_mod, "_deduplicate", 1),
    (prepare_mod.splits, "apply_quota", 1),
    (prepare_mod.splits, "split", 1),
    (prepare_mod, "_write_manifest", 1),
    (prepare_mod.cache, "gather", 1),
    (prepare_mod, "_write_csv", 1),
    (prepare_mod, "_write_csv", 2),
    (prepare_mod.completion, "mark_complete", 1),
    (prepare_mod.shutil, "rmtree", 1),
]


def _kill_after(monkeypatch, owner, name: str, nth: int) -> None:
    real, calls = getattr(owner, name), []

    def step(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(name)
        if len(calls) == nth:
            raise KeyboardInterrupt(f"killed after {name}")
        return result

    monkeypatch.setattr(owner, name, step)


@pytest.mark.parametrize(
    ("owner", "name", "nth"),
    KILL_POINTS,
    ids=[f"{n}{'#2' if k > 1 else ''}" for _, n, k in KILL_POINTS],
)
def test_kill_after_any_step_is_refused_then_rerun_completes(
    folder, tmp_path, monkeypatch, owner, name, nth
):

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _kill_after(m, owner, name, nth)
        with pytest.raises(KeyboardInterrupt):
            prepare_mod.prepare(_cfg(folder, out))
    finished = name in ("mark_complete", "rmtree")
    if not finished:  # readers refuse it in one line instead of reading zeros
        with pytest.raises(CxrGuideError, match="unfinished 'cxrguide prepare'"):
            Prepared.open(out)
    result = prepare_mod.prepare(_cfg(folder, out))
    assert result.reused == finished and not (out / ".work").exists()
    fresh = prepare_mod.prepare(_cfg(folder, tmp_path / "fresh")).out
    assert (out / "manifest.csv").read_text() == (fresh / "manifest.csv").read_text()
    assert (out / "duplicates.csv").read_text() == (fresh / "duplicates.csv").read_text()
    cache, ref = (np.load(p / "cache/images_64.npy") for p in (out, fresh))
    assert np.array_equal(cache, ref) and Prepared.open(out).manifest.shape[0] == 127


def test_failed_run_leftovers_do_not_block_a_corrected_run(folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:  # a run with another size that fails while scanning
        m.setattr(
            CsvFolderSource,
            "scan",
            lambda self: (_ for _ in ()).throw(CxrGuideError("labels.csv: broken")),
        )
        with pytest.raises(CxrGuideError, match="broken"):
            prepare_mod.prepare(_cfg(folder, out, size=96))
    assert (out / "prepare_config.yaml").exists()
    (out / "notes.txt").write_text("mine")  # never removed: prepare did not write it
    result = prepare_mod.prepare(_cfg(folder, out))
    assert result.n_images == 127 and not result.reused
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(CxrGuideError, match="different config"):  # a finished one is kept
        prepare_mod.prepare(_cfg(folder, out, size=96))


@pytest.mark.slow  # a subprocess importing the CLI: ~5 s quiet, 20+ s on a loaded machine
def test_sigkill_after_manifest_then_rerun_completes(tmp_path, capsys):
    """A real SIGKILL (no clean-up runs) right after manifest.csv, on a synth folder."""

    synth = tmp_path / "synth"
    generate_dataset(SynthConfig(out=synth, n=30, size=64, workers=1), progress=False)
    out = tmp_path / "prep"
    script = (
        "import os, signal, sys\n"
        "from cxrguide.cli import main\n"
        "from cxrguide.data import prepare as p\n"
        "real = p._write_manifest\n"
        "def dying(*a):\n"
        "    real(*a)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "p._write_manifest = dying\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = [
        "prepare",
        "--source",
        f"synthetic={synth}",
        "--out",
        str(out),
        "--size",
        "64",
        "--workers",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", script, *argv], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL and (out / "manifest.csv").exists()

    assert (
        main(["train", "--data", str(out), "--weights", "none", "--out", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err
    assert "unfinished 'cxrguide prepare'" in err and len(err.strip().splitlines()) == 1
    assert main(argv) == 0
    assert (out / "summary.json").exists() and not (out / ".work").exists()


def test_file_under_two_patients_and_sources_named(folder, tmp_path):
    with (folder / "labels.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow(("img/0001.png", "Normal", "second-patient", "siteA"))
    out = prepare_mod.prepare(_cfg(folder, tmp_path / "out")).out
    dups = pd.read_csv(out / "duplicates.csv", dtype=str)
    same = dups[dups.path == "img/0001.png"].iloc[0]
    assert same.image_id == same.duplicate_of  # one file, listed twice: the patients tell apart
    assert {same.patient_id, same.kept_patient_id} == {"t:second-patient", "t:siteA-Normal-1"}
    manifest = pd.read_csv(out / "manifest.csv")
    assert set(manifest.root) == {str(folder)}  # which folder each row came from
    with pytest.raises(CxrGuideError, match="given twice"):
        prepare_mod.prepare(
            _cfg(folder, tmp_path / "b", source=[f"testfolder={folder}", f"testfolder={folder}/"])
        )


def test_non_radiograph_dicom_rejected_with_its_modality(folder, tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "img/ct.dcm")
    with (folder / "labels.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow(("img/ct.dcm", "Normal", "ct-patient", "siteA"))
    prepare_mod.prepare(_cfg(folder, tmp_path / "out"))
    rejected = pd.read_csv(tmp_path / "out/rejected.csv")
    reasons = dict(zip(rejected.path, rejected.reason, strict=True))
    assert reasons["img/ct.dcm"].startswith("DICOM modality CT is not a radiograph (CR/DX/DR/RG)")
    prepare_mod.prepare(_cfg(folder, tmp_path / "allowed", allow_modality=["CT"]))
    m = pd.read_csv(tmp_path / "allowed/manifest.csv")
    assert "img/ct.dcm" in set(m.path)


def test_warning_codes_in_the_manifest_and_for_processing_rejected(folder, tmp_path):
    dicom_film(
        folder / "img/burn.dcm",
        chest_like(120, 100, seed=7),
        BurnedInAnnotation="YES",
        PatientOrientation=["R", "F"],
    )
    dicom_film(
        folder / "img/raw.dcm",
        chest_like(120, 100, seed=8),
        PresentationIntentType="FOR PROCESSING",
    )
    with (folder / "labels.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow(("img/burn.dcm", "Normal", "burn-patient", "siteA"))
        csv.writer(fh).writerow(("img/raw.dcm", "Normal", "raw-patient", "siteA"))
    out = prepare_mod.prepare(_cfg(folder, tmp_path / "out")).out
    m = pd.read_csv(out / "manifest.csv", keep_default_na=False).set_index("path")
    assert m.loc["img/burn.dcm", "warnings"] == "burned_in_annotation;mirrored"
    assert m.loc["img/0000.png", "warnings"] == ""
    rejected = pd.read_csv(out / "rejected.csv").set_index("path")
    assert rejected.loc["img/raw.dcm", "reason"].endswith(
        "pass --allow-for-processing to read it anyway"
    )


def test_dicom_with_a_cut_jpeg_frame_rejected(folder, tmp_path):
    jpeg_dicom(folder / "img/cut.dcm", keep=0.5)
    with (folder / "labels.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow(("img/cut.dcm", "Normal", "cut-patient", "siteA"))
    out = prepare_mod.prepare(_cfg(folder, tmp_path / "out")).out
    rejected = pd.read_csv(out / "rejected.csv")
    reasons = dict(zip(rejected.path, rejected.reason, strict=True))
    assert reasons["img/cut.dcm"].startswith("DICOM JPEG frame: truncated image data (the last")
    assert "img/cut.dcm" not in set(pd.read_csv(out / "manifest.csv").path)


def test_one_worker_and_pool_write_identical_outputs(folder, tmp_path):
    """Pool workers write straight into the memory-mapped work cache: same bytes as in-process."""
    one = prepare_mod.prepare(_cfg(folder, tmp_path / "one", workers=1)).out
    two = prepare_mod.prepare(_cfg(folder, tmp_path / "two", workers=2)).out
    for name in ("manifest.csv", "cache/images_64.npy", "rejected.csv", "duplicates.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert np.load(two / "cache/images_64.npy").any(axis=(1, 2)).all()  # no row left blank


def test_decode_chunks_cover_every_task_once():
    todo = list(range(131))
    for workers in (1, 2, 16):
        chunks = decode_pool.chunks(todo, workers)
        assert [t for c in chunks for t in c] == todo
        assert len(chunks) >= min(len(todo), 8 * workers) or max(map(len, chunks)) == 1


def test_parallel_gather_matches_a_serial_one(tmp_path):
    src = np.random.default_rng(0).integers(0, 256, (50, 8, 8), dtype=np.uint8)
    rows = [7, 3, 3, 49, 0] + list(range(10, 40))
    cache.gather(src, rows, tmp_path / "one.npy", chunk=4)
    cache.gather(src, rows, tmp_path / "two.npy", chunk=4, workers=3)
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert np.array_equal(one, src[rows]) and np.array_equal(two, src[rows])
    np.save(tmp_path / "src.npy", src)  # prepare's one pool: the workers open the files by name
    with fork_pool(2) as pool:
        cache.gather(
            cache.open_readonly(tmp_path / "src.npy"),
            rows,
            tmp_path / "three.npy",
            chunk=4,
            workers=2,
            pool=pool,
        )
    assert np.array_equal(np.load(tmp_path / "three.npy"), src[rows])


def test_a_failed_copy_process_raises_its_error_in_the_parent(tmp_path):
    src = np.zeros((50, 8, 8), dtype=np.uint8)
    with pytest.raises(IndexError, match="60"):
        cache.gather(src, list(range(20)) + [60], tmp_path / "bad.npy", chunk=4, workers=3)


def test_a_killed_worker_is_one_line_and_exit_2_not_a_hang(folder, tmp_path, monkeypatch, capsys):
    """The OOM killer taking a pool worker hung multiprocessing.Pool forever."""

    real = decode_pool.decode

    def dies_on_the_planted_file(task):
        if task[1].endswith("corrupt.png") and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
        return real(task)

    parent = os.getpid()
    monkeypatch.setattr(decode_pool, "decode", dies_on_the_planted_file)
    signal.alarm(120)  # a hang fails the test instead of stalling the suite
    try:
        code = main(
            [
                "prepare",
                "--source",
                f"testfolder={folder}",
                "--out",
                str(tmp_path / "out"),
                "--size",
                "64",
                "--workers",
                "2",
            ]
        )
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("cxrguide prepare: error: prepare: a worker process died"), err


def test_val_fraction_sets_the_split_and_an_older_config_is_reused(folder, tmp_path):
    out = tmp_path / "out"
    prepare_mod.prepare(_cfg(folder, out, val_fraction=0.3, test_fraction=0.1))
    m = pd.read_csv(out / "manifest.csv")
    for _, g in m.groupby(["site", "label"]):  # 21 films a stratum: 6.3 val, 2.1 test
        counts = g.split.value_counts()
        assert abs(counts["val"] - 6.3) <= 1 and abs(counts["test"] - 2.1) <= 1
    with pytest.raises(CxrGuideError, match="different config"):
        prepare_mod.prepare(_cfg(folder, out))
    old = tmp_path / "old"  # prepared before the fields existed: same as their defaults
    prepare_mod.prepare(_cfg(folder, old))
    saved = yaml.safe_load((old / "prepare_config.yaml").read_text())
    del saved["val_fraction"], saved["test_fraction"]
    (old / "prepare_config.yaml").write_text(yaml.safe_dump(saved))
    assert prepare_mod.prepare(_cfg(folder, old)).reused
    with pytest.raises(ConfigError, match="val_fraction"):
        _cfg(folder, old, val_fraction=0.6, test_fraction=0.5).validate()
