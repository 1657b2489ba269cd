from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrguide.config import LungsEvaluateConfig, LungsPrepareConfig, LungsTrainConfig, SynthConfig
from cxrguide.core import engine
from cxrguide.data.augment import CxrAugment
from cxrguide.data.synthetic.generate import generate_dataset
from cxrguide.errors import CxrGuideError
from cxrguide.lungs.prepare import prepare_lungs
from cxrguide.lungs.segmenter import load_lung_run, predict_batch
from cxrguide.lungs.train import LungsDataset, evaluate_lungs, train_lungs
from lung_phantoms import prepared_lung_phantoms
from tracking_testutils import assert_events_match_history

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [4, 8, 16, 32, 64, 4]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepared_lung_phantoms(tmp_path_factory.mktemp("lungs"), n=30, size=48, out="prep")


def _cfg(prepared, out, **kw) -> LungsTrainConfig:
    base = dict(
        data=prepared, out=out, features=TINY, max_epochs=5, batch_size=4, lr=3e-3, progress=False
    )
    return LungsTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    torch.set_num_threads(1)
    return train_lungs(_cfg(prepared, tmp_path_factory.mktemp("run") / "run"))


def test_dataset_reads_split_and_resizes(prepared):
    train = LungsDataset(prepared, "train")
    image, mask = train[0]
    assert image.shape == mask.shape == (1, 48, 48) and image.min() >= 0 and image.max() <= 1
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    small_img, small_mask = LungsDataset(prepared, "train", size=32)[0]
    assert small_img.shape == (1, 32, 32) and set(small_mask.unique().tolist()) == {0.0, 1.0}
    n = {s: len(LungsDataset(prepared, s)) for s in ("train", "val", "test")}
    assert sum(n.values()) == 30 and min(n.values()) >= 2


def test_training_set_augments_each_item_image_and_mask_together(prepared):
    plain = LungsDataset(prepared, "train")
    augment = CxrAugment(rotate=15, shift=0.1, zoom=0.1, brightness=0, contrast=0)
    augmented = LungsDataset(prepared, "train", augment=augment)
    torch.manual_seed(0)
    first = [augmented[i] for i in range(3)]
    torch.manual_seed(0)
    again = [augmented[i] for i in range(3)]
    for (img, mask), (img2, mask2), k in zip(first, again, range(3), strict=True):
        assert torch.equal(img, img2) and torch.equal(mask, mask2)  # torch's seeded generator
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert not torch.equal(mask, plain[k][1])  # each item moved...
        # ...and its mask moved with it: warping the plain pair's mask alone by the same draw
        torch.manual_seed(0)
        for j in range(k + 1):
            _, expected = augment(plain[j][0], plain[j][1])
        assert torch.equal(mask, expected)


def test_short_cpu_training_segments_phantoms(trained):
    """Lower bound at 48 px, 24 training films, 5 epochs (measured: val 0.955, test 0.944)."""
    run = trained.run
    assert trained.metrics["val"]["dice_mean"] > 0.88
    assert trained.metrics["test"]["dice_mean"] > 0.85
    assert trained.metrics["test"]["hd95_px_mean"] < 6
    hist = pd.read_csv(run / "history.csv")
    assert len(hist) == 5 and hist.val_dice.iloc[-1] > hist.val_dice.iloc[0]
    for name in ("config.yaml", "best.pt", "last.pt", "metrics.json", "per_image.csv"):
        assert (run / name).is_file()
    assert {"dice/val", "loss/train", "lr"} <= set(assert_events_match_history(run))
    per = pd.read_csv(run / "per_image.csv")
    assert set(per.split) == {"val", "test"} and per.dice.between(0, 1).all()
    val = per[per.split == "val"]
    assert val.dice.mean() == pytest.approx(trained.metrics["val"]["dice_mean"], abs=1e-4)


def test_finished_run_is_not_retrained_and_config_changes_refused(trained, prepared):
    again = train_lungs(_cfg(prepared, trained.run, device="cpu"))  # runtime field may change
    assert again.fit.history == trained.fit.history
    with pytest.raises(CxrGuideError, match="different config.*lr"):
        train_lungs(_cfg(prepared, trained.run, lr=1e-2))


def test_a_field_added_since_the_run_started_counts_as_its_default(trained, prepared):
    saved = trained.run / "config.yaml"
    original = saved.read_text()
    fields = yaml.safe_load(original)
    del fields["hflip"]  # as if the run had started before --hflip existed (default False)
    try:
        saved.write_text(yaml.safe_dump(fields))
        again = train_lungs(_cfg(prepared, trained.run))
        assert again.fit.history == trained.fit.history
        saved.write_text(yaml.safe_dump(fields))
        with pytest.raises(CxrGuideError, match=r"different config \(hflip\)"):
            train_lungs(_cfg(prepared, trained.run, hflip=True))
    finally:
        saved.write_text(original)


def test_killed_run_resumes_with_the_same_augmentations(prepared, tmp_path, monkeypatch):
    full = train_lungs(_cfg(prepared, tmp_path / "full", max_epochs=3))

    class Killed(Exception):
        pass

    def die(epoch, row):
        if epoch == 1:
            raise Killed

    real_fit = engine.fit
    monkeypatch.setattr(engine, "fit", lambda *a, **k: real_fit(*a, on_epoch_end=die, **k))
    with pytest.raises(Killed):
        train_lungs(_cfg(prepared, tmp_path / "resumed", max_epochs=3))
    monkeypatch.setattr(engine, "fit", real_fit)
    resumed = train_lungs(_cfg(prepared, tmp_path / "resumed", max_epochs=3))
    assert resumed.fit.history == full.fit.history
    assert resumed.metrics["test"] == full.metrics["test"]


def test_evaluate_rewrites_only_the_asked_split(trained):
    before = json.loads((trained.run / "metrics.json").read_text())
    metrics = evaluate_lungs(LungsEvaluateConfig(run=trained.run, splits=["test"]))
    assert metrics["test"]["dice_mean"] == pytest.approx(before["test"]["dice_mean"], abs=1e-6)
    assert metrics["val"] == before["val"]
    per = pd.read_csv(trained.run / "per_image.csv")
    assert set(per.split) == {"val", "test"}


def test_predict_batch_works_at_any_cache_size(trained, prepared):
    model, cfg = load_lung_run(trained.run)
    ds = LungsDataset(prepared, "test")
    image, mask = ds[0]
    img = image[0].numpy()
    native = predict_batch(model, img[None], cfg.size, torch.device("cpu"))[0]
    up = np.kron(img, np.ones((2, 2), np.float32))  # a 96 px cache
    big = predict_batch(model, up[None], cfg.size, torch.device("cpu"))[0]
    assert big.shape == (96, 96)
    truth = mask[0].numpy() > 0.5
    for prob, target in ((native, truth), (big, np.kron(truth, np.ones((2, 2), bool)))):
        pred = prob >= 0.5
        assert 2 * (pred & target).sum() / (pred.sum() + target.sum()) > 0.85


def test_errors(prepared, tmp_path):
    with pytest.raises(CxrGuideError, match="not a folder written by 'cxrguide lungs prepare'"):
        train_lungs(_cfg(tmp_path, tmp_path / "r"))
    with pytest.raises(CxrGuideError, match="not a run folder"):
        load_lung_run(tmp_path)
    with pytest.raises(CxrGuideError, match="size: must be 0 or a multiple of 16"):
        LungsTrainConfig(size=40).validate()


@pytest.mark.slow
def test_synth_phantoms_lower_bound(tmp_path):
    """`cxrguide synth` films at 64 px, 28 for training, 6 epochs of a tiny U-Net on one CPU
    thread (~10 s). Measured: val Dice 0.917, test 0.956; at 128 px see the report."""

    synth = SynthConfig(out=tmp_path / "syn", n=36, size=64, seed=1, workers=1, shortcut_test=0)
    generate_dataset(synth, progress=False)
    prep = prepare_lungs(
        LungsPrepareConfig(source=[f"v7={synth.out}"], out=tmp_path / "p", size=64, workers=1)
    )
    assert prep.n_images == 36
    result = train_lungs(_cfg(prep.out, tmp_path / "run", max_epochs=6))
    assert result.metrics["val"]["dice_mean"] > 0.85
    assert result.metrics["test"]["dice_mean"] > 0.85
