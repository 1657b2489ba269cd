"""What training optimises: L2 scope, class weights, balanced sampling, and what history logs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrguide.config import TrainConfig
from cxrguide.core import engine
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.errors import ConfigError
from cxrguide.evaluation.evaluate import score_split
from cxrguide.models.zoo import create_model
from cxrguide.training import dispatch
from cxrguide.training.fit_inputs import dataset_sources, train_loader
from cxrguide.training.losses import (
    balanced_class_weights,
    balanced_sample_weights,
    group_sample_weights,
    l2_penalty,
    paper_cross_entropy,
)
from inference_helpers import tiny_train_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_l2_scope_head_covers_the_head_kernels_only():
    model = create_model("mobilenet_v2", "none", seed=0)
    head = sum(
        float(m.weight.detach().pow(2).sum())
        for m in model.head.modules()
        if isinstance(m, nn.Linear)
    )
    every = sum(float(p.detach().pow(2).sum()) for p in model.parameters() if p.ndim > 1)
    assert l2_penalty(model, 1e-3, "head").item() == pytest.approx(1e-3 * head, rel=1e-5)
    assert l2_penalty(model, 1e-3, "all").item() == pytest.approx(1e-3 * every, rel=1e-5)
    assert every > 10 * head  # the body dominates the 'all' total (the 31.6 vs 1.1)
    assert l2_penalty(model.head, 1e-3, "head").item() == pytest.approx(1e-3 * head, rel=1e-5)
    with pytest.raises(ConfigError, match="l2_scope"):
        l2_penalty(model, 1e-3, "body")  # type: ignore[arg-type]


def test_balanced_class_weights_and_weighted_cross_entropy():
    w = balanced_class_weights(np.array([0, 0, 0, 1]))
    assert w.tolist() == pytest.approx([4 / 6, 4 / 2, 0.0])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 1])
    per = [paper_cross_entropy(logits[i : i + 1], y[i : i + 1]).item() for i in range(2)]
    weighted = paper_cross_entropy(logits, y, class_weights=w).item()
    assert weighted == pytest.approx((w[0].item() * per[0] + w[1].item() * per[1]) / 2, rel=1e-6)


def test_balanced_sampler_draws_classes_equally_and_reproducibly():
    labels = np.array([0] * 90 + [1] * 10)
    data = torch.utils.data.TensorDataset(torch.arange(100))
    weights = balanced_sample_weights(labels)

    def drawn(seed: int, epoch: int) -> np.ndarray:
        loader = engine.make_loader(data, 100, shuffle=True, seed=seed, sample_weights=weights)
        engine._set_epoch(loader, seed, epoch)
        return next(iter(loader))[0].numpy()

    first = drawn(0, 0)
    share = (labels[first] == 1).mean()
    assert 0.35 < share < 0.65  # 10% of the images, about half of the draws
    assert np.array_equal(first, drawn(0, 0))
    assert not np.array_equal(first, drawn(0, 1))


_cfg = partial(tiny_train_config, max_epochs=1)


def test_history_logs_l2_apart_from_cross_entropy(tiny_prepared, tmp_path):
    dispatch.train(_cfg(tiny_prepared, tmp_path / "runs"), score_split)
    board = tmp_path / "runs/leaderboard_stage1.csv"
    l2 = {}
    for scope in ("head", "all"):
        out = tmp_path / scope
        row = dispatch.train(
            _cfg(
                tiny_prepared,
                out,
                stage=2,
                from_run=board,
                top=1,
                l2_scope=scope,
                class_weights="balanced",
                sampler="balanced",
                data=None,
                augment=False,
            ),
            score_split,
        )[0]
        hist = pd.read_csv(Path(row["run"]) / "history.csv")
        assert {"train_loss", "train_l2", "val_loss"} <= set(hist.columns)
        # train_loss is the cross-entropy alone: about ln 3 for a barely trained 3-class model
        assert 0.5 < hist.train_loss.iloc[0] < 3.0
        l2[scope] = hist.train_l2.iloc[0]
    assert 0 < l2["head"] < l2["all"] / 10


def test_group_sampler_balances_class_by_source(tiny_prepared):

    # groups a (3 films), b (1): each group drawn equally often
    assert group_sample_weights(np.array(["a", "a", "a", "b"])).tolist() == pytest.approx(
        [1 / 3, 1 / 3, 1 / 3, 1.0]
    )
    prepared = Prepared.open(tiny_prepared)
    manifest = prepared.manifest.copy()  # skew: 7 of 8 Normal training films from site0
    normal = np.flatnonzero((manifest.label == "Normal") & (manifest.split == "train"))
    manifest.loc[normal, "site"] = ["site0"] * 7 + ["site1"]
    prepared = Prepared(prepared.root, manifest, prepared.size)
    data = CxrDataset(prepared, "train", image_size=32)
    labels = np.asarray(data.labels)[data.rows]
    cfg = TrainConfig(sampler="group", group_by="site", batch_size=len(data), seed=0)
    sources = dataset_sources(cfg, prepared, data)
    assert list(sources) == list(manifest.site.to_numpy()[data.rows])
    weights = train_loader(cfg, data, labels, sources).sampler.weights.numpy()
    cells = pd.Series(weights).groupby(labels.astype(str) + "|" + sources).sum()
    assert len(cells) == 6 and cells.to_numpy() == pytest.approx(np.ones(6))  # 3 classes x 2
    lone = data.rows.tolist().index(normal[-1])
    assert weights[lone] == 1.0 and weights[data.rows.tolist().index(normal[0])] == 1 / 7
    assert dataset_sources(TrainConfig(sampler="none"), prepared, data) is None
    with pytest.raises(ConfigError, match="'group' needs"):
        train_loader(cfg, data, labels)
    with pytest.raises(ConfigError, match="no 'source_x' column"):
        dataset_sources(TrainConfig(sampler="group", group_by="source_x"), prepared, data)  # type: ignore[arg-type]
