from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from cxrguide.config import LungsPredictConfig, LungsTrainConfig
from cxrguide.data.imaging import fit_square
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.lungs.predict import predict_images, predict_prepared, unletterbox
from cxrguide.lungs.segmenter import inference_batch
from cxrguide.lungs.train import train_lungs
from lung_phantoms import prepared_lung_phantoms, write_phantoms

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lungs")
    prep = prepared_lung_phantoms(root, n=30, size=48)
    cfg = LungsTrainConfig(
        data=prep,
        out=root / "run",
        features=[4, 8, 16, 32, 64, 4],
        max_epochs=5,
        batch_size=4,
        lr=3e-3,
        progress=False,
    )
    return train_lungs(cfg).run


def _classifier_prep(root: Path, phantoms: Path, size: int = 64) -> Path:
    """A folder shaped like `cxrguide prepare` output (manifest + config + image cache)."""
    files = sorted((phantoms / "images").glob("*.png"))
    rows, images = [], []
    for k, f in enumerate(files):
        img = np.asarray(Image.open(f))
        images.append(fit_square(img, size))
        rows.append(
            {
                "image_id": f"synthetic:images/{f.name}",
                "path": f"images/{f.name}",
                "label": "Normal",
                "width": img.shape[1],
                "height": img.shape[0],
                "split": "train",
                "cache_index": k,
            }
        )
    root.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "prepare_config.yaml").write_text(yaml.safe_dump({"size": size}))
    (root / "cache").mkdir()
    np.save(root / f"cache/images_{size}.npy", np.stack(images))
    (root / "summary.json").write_text("{}")  # the completion marker
    return root


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_masks_for_a_prepared_set_align_with_its_image_cache(run, tmp_path):
    phantoms = write_phantoms(tmp_path / "ph", n=10, size=64, seed=7)
    prep = _classifier_prep(tmp_path / "prep", phantoms)
    manifest_before = (prep / "manifest.csv").read_bytes()
    result = predict_prepared(LungsPredictConfig(run=run, data=prep, batch_size=4))
    assert result.masks == prep / "cache/lungs_64.npy" and result.n == 10
    masks = np.load(result.masks)
    assert masks.shape == (10, 64, 64) and set(np.unique(masks)) <= {0, 255}
    quality = pd.read_csv(prep / "lung_quality.csv")
    manifest = pd.read_csv(prep / "manifest.csv")
    assert list(quality.image_id) == list(manifest.image_id)
    assert (prep / "manifest.csv").read_bytes() == manifest_before
    assert set(quality.flag) <= {"ok", "empty", "implausible"} and (quality.flag == "ok").sum() >= 8
    for row in manifest.itertuples():
        truth = np.asarray(Image.open(phantoms / "masks" / row.path[7:])) > 0
        expected = fit_square(truth, 64, mask=True)
        assert _dice(masks[row.cache_index] > 0, expected) > 0.85
    side = json.loads((prep / "cache/lungs_64.json").read_text())
    assert (
        side["checkpoint"] == "best.pt" and side["n"] == 10 and len(side["checkpoint_sha256"]) == 64
    )
    assert not list((prep / "cache").glob("*.tmp*"))


def test_overlays_for_a_prepared_set_one_per_row_in_manifest_order(run, tmp_path):
    phantoms = write_phantoms(tmp_path / "ph", n=4, size=64, seed=3)
    prep = _classifier_prep(tmp_path / "prep", phantoms)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="--overlay exists and is not a folder"):
        predict_prepared(LungsPredictConfig(run=run, data=prep, overlay=tmp_path / "file"))
    ov = tmp_path / "ov"
    result = predict_prepared(LungsPredictConfig(run=run, data=prep, batch_size=4, overlay=ov))
    assert result.overlays == ov
    manifest = pd.read_csv(prep / "manifest.csv")
    files = sorted(ov.iterdir())
    assert [f.name for f in files] == [
        f"{i:06d}_{Path(p).stem}_overlay.png" for i, p in enumerate(manifest.path)
    ]
    images, masks = np.load(prep / "cache/images_64.npy"), np.load(result.masks) > 0
    tinted = 0
    for i, f in enumerate(files):
        rgb = np.asarray(Image.open(f))
        assert rgb.shape == (64, 64, 3)
        out = ~masks[i]  # the cached image itself outside the lungs, tinted inside
        np.testing.assert_array_equal(rgb[out], np.repeat(images[i][out][:, None], 3, axis=1))
        tinted += int((rgb[masks[i], 0] > rgb[masks[i], 1]).sum())
    assert tinted > 100


def test_a_lungs_prepare_folder_is_not_overwritten(run, tmp_path):
    lungs_prep = Path(yaml.safe_load((run / "config.yaml").read_text())["data"])
    with pytest.raises(CxrGuideError, match="holds the annotations"):
        predict_prepared(LungsPredictConfig(run=run, data=lungs_prep))
    out = predict_prepared(LungsPredictConfig(run=run, data=lungs_prep, out=tmp_path / "pred"))
    assert out.masks == tmp_path / "pred/lungs_48.npy" and out.quality.parent == tmp_path / "pred"


def test_single_images_get_masks_at_their_own_size_and_overlays(run, tmp_path):
    phantoms = write_phantoms(tmp_path / "ph", n=5, size=64, seed=3)  # ph004 is 64 x 80
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    files = [str(p) for p in sorted((phantoms / "images").glob("*.png"))] + [str(bad)]
    cfg = LungsPredictConfig(run=run, images=files, out=tmp_path / "m", overlay=tmp_path / "o")
    assert cfg.batch_size == 0  # automatic: 4 on this CPU, so the 6 files take two batches
    results = predict_images(cfg)
    assert [r.path for r in results] == files
    assert results[-1].quality is None and "not an image" in results[-1].error
    for r in results[:-1]:
        truth = np.asarray(Image.open(phantoms / "masks" / Path(r.path).name)) > 0
        mask = np.asarray(Image.open(r.mask_file)) > 0
        assert mask.shape == truth.shape and _dice(mask, truth) > 0.85
        over = Image.open(r.overlay_file)
        assert over.mode == "RGB" and over.size == (truth.shape[1], truth.shape[0])
    assert np.asarray(Image.open(results[4].mask_file)).shape == (80, 64)


def test_unletterbox_inverts_fit_square():
    rng = np.random.default_rng(0)
    img = rng.random((30, 50)).astype(np.float32)
    back = unletterbox(fit_square(img, 50), 30, 50)
    assert back.shape == (30, 50) and np.allclose(back, img, atol=1e-5)


def test_batch_size_zero_is_automatic_per_device():
    assert inference_batch(0, torch.device("cpu")) == 4
    assert inference_batch(0, torch.device("cuda")) == 16
    assert inference_batch(7, torch.device("cpu")) == 7  # an explicit size is kept
    assert LungsPredictConfig().batch_size == 0
    with pytest.raises(ConfigError, match="batch_size"):
        LungsPredictConfig(batch_size=-1).validate()
