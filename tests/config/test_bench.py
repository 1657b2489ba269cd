"""``bench_train_config``: both benches' runs get the fields they had, each bench its own."""

from __future__ import annotations

from pathlib import Path

from cxrguide.config import ShortcutBenchConfig, SourcesBenchConfig, TrainConfig
from cxrguide.config.bench import bench_train_config


def test_shortcut_runs_keep_momentum_progress_and_the_default_stage1_lr():
    bench = ShortcutBenchConfig(backbone="resnet18", size=48, lr=3e-3, momentum=0.5, l2=1e-4)
    got = bench_train_config(
        bench,
        stage=3,
        data=Path("d"),
        parent=Path("p"),
        folder=Path("f"),
        seed=2,
        epochs=5,
        attention=None,
        gain_bn="clean",
        momentum=bench.momentum,
    )
    want = TrainConfig(
        stage=3,
        data=Path("d"),
        backbone="resnet18",
        from_run=Path("p"),
        out=Path("f"),
        weights=bench.weights,
        image_size=48,
        max_epochs=5,
        patience=5,
        batch_size=bench.batch_size,
        finetune_lr=3e-3,
        momentum=0.5,
        l2=1e-4,
        augment=bench.augment,
        seed=2,
        device=bench.device,
        resume=True,
        attention=["gate", "gain"],
        gain_bn="clean",
        rrr_weight=bench.rrr_weight,
    )
    assert got == want
    assert got.progress and got.lr == TrainConfig().lr


def test_sources_runs_take_their_own_stage1_lr_and_no_progress():
    bench = SourcesBenchConfig(data=Path("d"), stage1_lr=0.05, lr=2e-4)
    got = bench_train_config(
        bench,
        stage=1,
        data=bench.data,
        parent=None,
        folder=Path("f"),
        seed=0,
        epochs=bench.stage1_epochs,
        attention=["early-gate"],
        gain_bn=bench.gain_bn,
        lr=bench.stage1_lr,
        progress=False,
    )
    assert (got.lr, got.finetune_lr, got.progress) == (0.05, 2e-4, False)
    assert got.momentum == TrainConfig().momentum and got.attention == ["early-gate"]
